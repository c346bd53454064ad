"""A training run around the algorithm (trainer/ppo.py): the env and policy built from the configuration, the loop
with its logging, checkpoints and signals, what a number that is not finite does, several processes under torchrun,
and the switches that make it faster (torch.compile, CUDA graphs).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time

import torch
from tensordict import TensorDict

from envs import make_env
from policies import make_policy
from trainer import distributed
from trainer.checkpoint import load_checkpoint, load_policy_weights, prepare_run_dir, save_checkpoint
from trainer.collapse.faults import apply_faults  # the collapse study's; none unless cfg.faults names some
from trainer.config import TrainConfig
from trainer.cuda_graph import GraphedActing, GraphedRollout, GraphedUpdate
from trainer.host_memory import keep_freed_memory
from trainer.ppo import PPO


class NonFiniteError(RuntimeError):
    """A loss, the gradient norm or a weight stopped being a finite number."""


class Trainer(PPO):
    def __init__(self, cfg: TrainConfig, given: tuple[str, ...] = ()):
        """`cfg.resume` continues a checkpoint with its saved configuration; `given` names the options of `cfg` set
        on purpose beside it (scripts/train.py passes the command line's), applied where a resumed run can change
        them (TrainConfig.resumed), refused with a ValueError otherwise."""
        if cfg.resume:
            saved = load_checkpoint(cfg.resume)
            cfg = cfg.resumed(saved["config"], given)
        cfg.check()  # every option on its own, before any work
        self.ranks = distributed.setup(cfg.resolved_device)  # one rank, unless launched by torchrun
        if self.ranks.main:
            prepare_run_dir(cfg.log_dir, cfg.name)  # before any work: a file in its way or no permission is said now
        threads = cfg.torch_threads or (self.ranks.world > 1 and self.ranks.cpu_share())
        if threads:
            torch.set_num_threads(threads)
        keep_freed_memory()  # no page faults on the buffers every step reallocates (trainer/host_memory.py)
        device = self.ranks.device(cfg.resolved_device)
        cfg.check_device(device)
        if cfg.cuda_graphs and self.ranks.world > 1:
            raise ValueError("cuda_graphs=True under torchrun: the recorded update has no all-reduce of the gradients; "
                             "leave --cuda-graphs out of a multi-process run")
        seed = distributed.rank_seed(cfg.seed, self.ranks.rank)
        torch.manual_seed(cfg.seed)  # the policy's initial weights (the same on every rank) and its action sampling
        env = make_env(cfg.env, num_envs=cfg.num_envs, seed=seed, device=str(device), **cfg.env_overrides)
        cfg.validate(env.num_agents)
        policy = make_policy(cfg.policy, env, **cfg.policy_options)
        if cfg.init_from and not cfg.resume:  # a curriculum's next stage: the earlier stage's weights, all else fresh
            load_policy_weights(policy, cfg.init_from, cfg)
        policy = apply_faults(policy, cfg.fault_set).to(device)
        if self.ranks.world > 1:
            self.ranks.broadcast(policy)
            torch.manual_seed(seed)  # each rank samples its own actions
        if cfg.compile:
            policy.compile_parts()
        super().__init__(cfg, env, policy, seed, env.num_agents * cfg.bptt * self.ranks.world)
        self.interrupted = 0  # the signal (SIGINT, SIGTERM) the last train() stopped at, or 0
        self.saved_update: int | None = None  # the update of the checkpoint at checkpoint_path, once written
        if cfg.cuda_graphs:  # a torch env's whole rollout as one graph, another env's acting step alone
            if hasattr(env, "STATE"):
                self.rollout = GraphedRollout(self, self.rollout)
            else:
                self.act = GraphedActing(policy, warmup=3 if cfg.compile else 2)
            self.train_step = GraphedUpdate(self.minibatch_step, policy, self.optimizer)
        if cfg.resume:
            self.load_state_dict(saved)

    # --- what the algorithm leaves to the run -------------------------------------------------------
    def learn(self) -> dict[str, float]:
        """One update (PPO.learn); its statistics read back once (and the advantages' spread before the minibatches
        under --lr-follows-advantages), as means over ranks. A number that is not finite stops the run here
        (NonFiniteError)."""
        means, steps, weights = super().learn()
        read = iter(self.ranks.mean(torch.cat([torch.stack(list(means.values())), steps.flatten(), weights]).float())
                    .tolist())
        stats = {k: next(read) for k in means}  # in the order they were joined
        self.check_finite([[next(read) for _ in range(4)] for _ in range(len(steps))], list(read))
        return {**stats, "learning_rate": self.learning_rate}

    def reduce_gradients(self) -> None:
        self.ranks.average_gradients(self.policy.parameters())  # nothing to do with one rank

    def advantage_std(self) -> torch.Tensor:
        spread = super().advantage_std()  # averaged over ranks only where it sets the rate: one rate on every rank
        return self.ranks.mean(spread) if self.cfg.lr_follows_advantages else spread

    def skip_step(self, finite: torch.Tensor) -> bool:
        """--nonfinite skip: one read per minibatch, the same on every rank."""
        return self.cfg.nonfinite == "skip" and not self.ranks.all(finite.all())

    def check_finite(self, steps: list[list[float]], weights: list[float]) -> None:
        """Stop at the first quantity that is not a finite number (NonFiniteError), before anything is saved. Each
        flag is a mean over ranks: below 1 if any rank saw it."""
        names = ("the policy loss", "the value loss", "the entropy", "the gradient norm")
        bad = [(m, i) for m, step in enumerate(steps) for i, ok in enumerate(step) if ok < 1]
        if bad:
            what = f"{names[bad[0][1]]} of minibatch {bad[0][0] + 1} of {len(steps)}"
        elif min(weights, default=1) < 1:
            what = f"the weights ({next(n for n, p in self.policy.named_parameters() if not p.isfinite().all())})"
        else:
            return
        saved = (f"the last good checkpoint is {self.checkpoint_path} (update {self.saved_update})"
                 if self.saved_update is not None else "no checkpoint was saved yet")
        self.update -= 1  # the update that failed does not count
        raise NonFiniteError(f"update {self.update + 1}: {what} is not a finite number. The run stopped without saving: "
                             f"{saved}. Lower --learning-rate or --max-grad-norm, or pass --nonfinite skip to skip "
                             "such minibatches")

    def health(self) -> dict[str, torch.Tensor]:
        """Cheap signs of saturation or blow-up, on the device: each part's weight norm, the LSTM cell's mean |c|
        over every agent and layer where the rollout left it (a saturated cell sits near its limit), and the
        fraction of the encoder's output units (each policy's encoder ends in a ReLU) that are 0 (below 0 under
        --encoder-leak) for every agent's current observation: no gradient reaches the observation through them
        (under the leak, one scaled by its slope), and at 1 the policy acts blind."""
        parts = {name: getattr(self.policy, name) for name in ("encoder", "memory", "critic", "actor")}
        out = {f"weights/{name}_norm": torch.stack([p.detach().norm() for p in part.parameters()]).norm()
               for name, part in parts.items()}
        with torch.no_grad(), self.autocast():
            features = self.policy.encode(self.next_obs["env_obs"])
        out["encoder/dead_units"] = (features <= 0).all(0).float().mean()
        cells = [c for _, c in self.policy.get_memory().values()]
        if cells:
            out["memory/cell_abs_mean"] = torch.cat([c.abs().flatten() for c in cells]).mean()
        return out

    # --- the run ------------------------------------------------------------------------------------
    @property
    def run_dir(self) -> str:
        return os.path.join(self.cfg.log_dir, self.cfg.name)

    def train(self, updates: int | None = None, quiet: bool = False) -> list[dict[str, float]]:
        """Run `updates` more updates (default: to total_steps), logging and checkpointing; return the metrics.

        The first Ctrl-C or SIGTERM (a cluster's preemption) finishes the current update, saves a checkpoint and
        stops, leaving the signal's number in `interrupted`; a second signal aborts."""
        from torch.utils.tensorboard import SummaryWriter

        last = self.num_updates if updates is None else min(self.num_updates, self.update + updates)
        writer = SummaryWriter(self.run_dir) if self.ranks.main else None  # only rank 0 writes
        interrupted, stopped = [], 0

        def on_interrupt(signum, frame):
            if interrupted:
                raise KeyboardInterrupt
            interrupted.append(signum)
            print(f"{signal.Signals(signum).name}: finishing this update, then saving a checkpoint (a second signal "
                  "aborts)", flush=True)

        previous = {s: signal.signal(s, on_interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
        history, episode = [], {}
        start_time, start_step = time.perf_counter(), self.global_step
        try:
            while self.update < last and not stopped:
                t0 = time.perf_counter()
                self.rollout()
                health = self.health()
                metrics = self.learn()
                metrics.update(self.ranks.mean_dict(health))
                metrics["SPS"] = self.batch_size / (time.perf_counter() - t0)
                stats = self.env.episode_stats()
                if self.ranks.all(bool(stats)):  # with several ranks, once every rank has ended an episode
                    episode = self.ranks.mean_dict(stats)
                metrics.update({f"episode/{k}": v for k, v in episode.items()})
                history.append(metrics)
                if self.ranks.main:
                    self._log(writer, metrics, quiet, start_time, start_step)
                if self.update % self.cfg.checkpoint_interval == 0:
                    self.save()
                stopped = self.ranks.max(interrupted[0] if interrupted else 0)  # a signal on any rank stops all
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
            if writer is not None:
                writer.close()
        self.save()
        self.interrupted = stopped
        if stopped and not quiet and self.ranks.main:
            print(f"interrupted: saved {self.checkpoint_path}; continue with --resume {self.checkpoint_path}")
        return history

    def _log(self, writer, metrics: dict[str, float], quiet: bool, start_time: float, start_step: int) -> None:
        for key, value in metrics.items():
            if value is not None:
                group = "charts" if key in ("SPS", "learning_rate") or key.startswith("episode/") else "losses"
                writer.add_scalar(key if "/" in key else f"{group}/{key}", value, self.global_step)
        if quiet:
            return
        elapsed = time.perf_counter() - start_time
        rate = (self.global_step - start_step) / max(elapsed, 1e-9)
        eta = (self.num_updates * self.batch_size - self.global_step) / max(rate, 1e-9)
        ret = metrics.get("episode/return")
        print(f"update {self.update}/{self.num_updates} | step {self.global_step:,} | SPS {metrics['SPS']:,.0f} | "
              f"return {'-' if ret is None else f'{ret:.3f}'} | kl {metrics['approx_kl']:.4f} | "
              f"ev {metrics['explained_variance']:.2f} | ETA {int(eta // 60)}m{int(eta % 60):02d}s", flush=True)

    # --- checkpoints: everything a resumed run needs to continue exactly ----------------------------
    @property
    def checkpoint_path(self) -> str:
        return os.path.join(self.run_dir, "checkpoint.pt")

    def state_dict(self) -> dict | None:
        """Everything a resumed run needs, on rank 0 (None elsewhere). Every rank must call it: it gathers each
        rank's envs, memory and random streams."""
        ranks = self.ranks.gather({
            "env": self.env.state_dict(), "carried": self.carried,
            "next_obs": self.next_obs.select("env_obs", "rewards", "dones", "truncateds", "final_values",
                                             strict=False).to_dict(),
            "rng": {"torch": torch.get_rng_state(), "sampler": self.sampler.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else []},
        })
        if not self.ranks.main:
            return None
        return {"config": dataclasses.asdict(self.cfg.replace(resume="")), "update": self.update,
                "global_step": self.global_step, "advantage_std_peak": self.advantage_std_peak,
                "policy": self.policy.state_dict(),
                "optimizer": plain_optimizer_state(self.optimizer), "ranks": ranks}

    def load_state_dict(self, state: dict) -> None:
        parts = state.get("ranks") or [state]  # a checkpoint from before ranks kept its one rank's part at the top
        if len(parts) != self.ranks.world:
            raise ValueError(f"the checkpoint was written by {len(parts)} rank(s), each with its own envs, memory and "
                             f"random streams; resume it with the same number of processes (torchrun "
                             f"--nproc-per-node {len(parts)}), not {self.ranks.world}")
        self.update, self.global_step = state["update"], state["global_step"]
        self.advantage_std_peak = state.get("advantage_std_peak", 0.0)  # older checkpoints: none kept
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        state = parts[self.ranks.rank]
        self.env.load_state_dict(state["env"])
        if self.env.exact_resume:
            self.next_obs = TensorDict(state["next_obs"], batch_size=[self.env.num_agents]).to(self.device)
            self.carried = {k: (h.to(self.device), c.to(self.device)) for k, (h, c) in state.get("carried", {}).items()}
        else:  # the env restarted its episodes on load: no memory to carry into them
            self.next_obs = self.env.reset()
        torch.set_rng_state(state["rng"]["torch"])
        self.sampler.set_state(state["rng"]["sampler"])
        if state["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])

    def save(self, path: str | None = None) -> str:
        """Write the checkpoint (rank 0; every rank must call it)."""
        path = path or self.checkpoint_path
        state = self.state_dict()
        if self.ranks.main:
            save_checkpoint(path, state)
        if path == self.checkpoint_path:
            self.saved_update = self.update
        return path


def plain_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state with its learning rate a number and capturable off, as an eager run makes them: a
    recorded update (trainer/cuda_graph.py) turns them into a device tensor and on, and sets them so again."""
    state = optimizer.state_dict()
    state["param_groups"] = [{**g, "lr": float(g["lr"]), "capturable": False} for g in state["param_groups"]]
    return state
