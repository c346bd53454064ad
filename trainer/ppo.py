"""Recurrent PPO, in the order a reader expects:

    for each update:
        reset_memory; roll out bptt steps of every agent into the segmented buffer (no grad)
        returns = advantages (ratio 1) + values
        for each epoch, for each minibatch:
            advantages with the latest importance ratios (V-trace); sample whole segments
            reset_memory; recompute log-probs, values, entropy over the segments
            loss = clipped surrogate (normalised advantage x importance weight) + clipped value - entropy
            backward; clip the gradient norm; optimizer step; clip_weights
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from collections import defaultdict

import torch
from tensordict import TensorDict

from envs import make_env
from experience.buffer import SegmentedBuffer
from experience.sampling import prio_beta, sample_segments, shuffled_minibatches
from policies import make_policy
from trainer import distributed
from trainer.advantage import compute_advantages
from trainer.checkpoint import load_checkpoint, load_policy_weights, prepare_run_dir, save_checkpoint
from trainer.collapse.faults import apply_faults  # the collapse study's; none unless cfg.faults names some
from trainer.config import TrainConfig
from trainer.cuda_graph import GraphedActing, GraphedRollout, GraphedUpdate
from trainer.host_memory import keep_freed_memory
from trainer.loss import ppo_loss


class NonFiniteError(RuntimeError):
    """A loss, the gradient norm or a weight stopped being a finite number."""


class Trainer:
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
        self.cfg = cfg
        self.device = self.ranks.device(cfg.resolved_device)
        cfg.check_device(self.device)
        if cfg.cuda_graphs and self.ranks.world > 1:
            raise ValueError("cuda_graphs=True under torchrun: the recorded update has no all-reduce of the gradients; "
                             "leave --cuda-graphs out of a multi-process run")
        seed = distributed.rank_seed(cfg.seed, self.ranks.rank)
        torch.manual_seed(cfg.seed)  # the policy's initial weights (the same on every rank) and its action sampling
        self.env = make_env(cfg.env, num_envs=cfg.num_envs, seed=seed, device=str(self.device), **cfg.env_overrides)
        cfg.validate(self.env.num_agents)
        policy = make_policy(cfg.policy, self.env, **cfg.policy_options)
        if cfg.init_from and not cfg.resume:  # a curriculum's next stage: the earlier stage's weights, all else fresh
            load_policy_weights(policy, cfg.init_from, cfg)
        self.policy = apply_faults(policy, cfg.fault_set).to(self.device)
        if self.ranks.world > 1:
            self.ranks.broadcast(self.policy)
            torch.manual_seed(seed)  # each rank samples its own actions
        if cfg.compile:
            self.policy.compile_parts()
        # with --cuda-graphs a torch env's whole rollout is one CUDA graph; another env's acting step alone is
        # (trainer/cuda_graph.py)
        graph_rollout = cfg.cuda_graphs and hasattr(self.env, "STATE")
        self.act = GraphedActing(self.policy, warmup=3 if cfg.compile else 2) \
            if cfg.cuda_graphs and not graph_rollout else self.policy
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=cfg.learning_rate, eps=cfg.adam_eps, fused=True)
        memory = self.policy.memory
        self.buffer = SegmentedBuffer(self.env.spec, self.env.num_agents, cfg.bptt, self.device,
                                      (memory.num_layers, memory.hidden_size))
        self.returns = torch.zeros_like(self.buffer.data["values"])  # the update's value targets
        self.vtrace_ratio = torch.ones_like(self.returns)  # π/μ per step, as the last minibatch that held it left it
        # one gradient step on a minibatch: the method, or the same step replayed as a CUDA graph (trainer/cuda_graph.py)
        self.train_step = GraphedUpdate(self.minibatch_step, self.policy, self.optimizer) if cfg.cuda_graphs \
            else self.minibatch_step
        self.carried: dict = {}  # carry mode: the memory the last rollout ended with, where the next one starts
        self.sampler = torch.Generator(self.device).manual_seed(seed)
        self.batch_size = self.buffer.batch_size * self.ranks.world  # agent steps per update, every rank's
        self.minibatch_segments = cfg.segments_per_minibatch(self.env.num_agents)
        self.num_updates = cfg.total_steps // self.batch_size
        self.update = 0
        self.global_step = 0
        self.interrupted = 0  # the signal (SIGINT, SIGTERM) the last train() stopped at, or 0
        self.saved_update: int | None = None  # the update of the checkpoint at checkpoint_path, once written
        self.next_obs = self.env.reset()
        if graph_rollout:
            self.rollout = GraphedRollout(self, self.rollout)
        if cfg.resume:
            self.load_state_dict(saved)

    # --- one update ---------------------------------------------------------------------------------
    def rollout(self) -> None:
        """Act bptt steps with every agent, storing each step in the buffer. The memory starts from zero (reset) or
        from where the last rollout left it (carry)."""
        cfg, final = self.cfg, self.cfg.truncation_bootstrap == "final"
        self.policy.reset_memory()
        self.buffer.reset()
        if cfg.memory == "carry":  # the state the last rollout ended in (zeros before the first), kept with the rows
            self.policy.set_memory(self.carried)
            self.buffer.store_initial_state(0, *self.carried.get(0, self.zero_state()))
        td = self.next_obs
        with torch.no_grad():
            while not self.buffer.ready:
                td.set_non_tensor("training_env_id_start", 0)  # one slice: every agent, from agent 0
                with self.autocast():
                    td = self.act(td)
                self.buffer.store(td, start=0)
                td = self.env.step(td["actions"], **({"final_obs": True} if final else {}))
                if final:  # valued now, while the memory still holds the episode the time limit cut
                    td["final_values"] = self.value(td["final_env_obs"])
            if cfg.horizon_bootstrap:  # the step after the last column, valued with the state the rollout ended in
                value = self.value(td["env_obs"], td["dones"] | td["truncateds"])
                self.buffer.store_horizon(td.exclude("env_obs").set("values", value), start=0)
        if cfg.memory == "carry":
            self.carried = self.policy.get_memory()
        self.next_obs = td
        self.global_step += self.batch_size

    def value(self, obs: torch.Tensor, starts: torch.Tensor | None = None) -> torch.Tensor:
        """V of one acting step's observations from the current memory, which stays as it is; `starts` marks the
        rows whose episode begins with this observation (their state is zeroed first)."""
        starts = torch.zeros(len(obs), dtype=torch.bool, device=obs.device) if starts is None else starts
        td = TensorDict({"env_obs": obs, "dones": starts, "truncateds": torch.zeros_like(starts)}, batch_size=[len(obs)])
        with self.autocast():
            return self.policy.value(td)

    def zero_state(self) -> tuple[torch.Tensor, torch.Tensor]:
        memory = self.policy.memory
        zeros = torch.zeros(memory.num_layers, self.env.num_agents, memory.hidden_size, device=self.device)
        return zeros, zeros

    def learn(self) -> dict[str, float]:
        """One PPO update on the rollout in the buffer; returns the update's mean statistics."""
        cfg, data = self.cfg, self.buffer.data
        lr = self.set_learning_rate()
        self.vtrace_ratio.fill_(1)
        self.returns.copy_(self.advantages(self.vtrace_ratio) + data["values"])
        stats: dict[str, list[torch.Tensor]] = defaultdict(list)
        finite: list[torch.Tensor] = []  # per minibatch: are its losses and gradient norm finite numbers
        for _ in range(cfg.update_epochs):
            for index, weights, advantages in self.minibatches(self.vtrace_ratio):
                step = self.train_step(index, weights, advantages)
                if step is None:  # skipped: not a finite number
                    stats["skipped_minibatches"].append(torch.ones((), device=self.device))
                    continue
                finite.append(step.pop("finite"))  # read with the statistics when the update ends
                ratio = step.pop("ratio")
                if not stats:  # before any step: 0 exactly when training recomputes what acting did
                    stats["ratio_deviation_first_minibatch"].append((ratio - 1).abs().max())
                for k, v in step.items():
                    stats[k].append(v)  # statistics stay on the device until the update ends
        stats["explained_variance"].append(explained_variance(data["values"], self.returns))
        stats["skipped_minibatches"].append(torch.zeros((), device=self.device))  # summed, not averaged, below
        weights = torch.stack([p.isfinite().all() for p in self.policy.parameters()])
        means = [torch.stack(v).float().mean() if k != "skipped_minibatches" else torch.stack(v).sum()
                 for k, v in stats.items()]
        # the one read back, as means over ranks: statistics of the whole job, and any rank's non-finite number
        read = self.ranks.mean(torch.cat([torch.stack(means), *finite, weights]).float()).tolist()
        self.check_finite(read[len(means):], len(finite))
        self.update += 1
        return {**dict(zip(stats, read[:len(means)])), "learning_rate": lr}

    def minibatch_step(self, index: torch.Tensor, weights: torch.Tensor,
                       advantages: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """One gradient step on segments `index`: recompute them from their first state, the PPO loss, backward, the
        clipped gradient, the optimizer's step and clip_weights; the step's statistics (on the device), or None
        when `--nonfinite skip` skipped it."""
        cfg, minibatch = self.cfg, self.buffer.data[index]
        self.policy.reset_memory()
        if cfg.memory == "carry":  # each segment starts from the state acting started it from
            self.policy.set_memory({0: self.buffer.state_of(index)})
        with self.autocast():
            new = self.policy(minibatch.select("env_obs", "actions", "dones", "truncateds").clone(False))
        out = ppo_loss(new["act_log_prob"], minibatch["act_log_prob"], advantages, weights,
                       new["values"], minibatch["values"], self.returns[index], new["entropy"],
                       clip_coef=cfg.clip_coef, vf_clip_coef=cfg.vf_clip_coef, vf_coef=cfg.vf_coef,
                       ent_coef=cfg.ent_coef, norm_adv=cfg.norm_adv)

        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        self.ranks.average_gradients(self.policy.parameters())  # nothing to do with one rank
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
        finite = torch.stack([out.pg_loss, out.v_loss, out.entropy, grad_norm]).isfinite()
        if cfg.nonfinite == "skip" and not self.ranks.all(finite.all()):  # one read, the same on every rank
            return None
        self.optimizer.step()
        self.policy.clip_weights()

        ratio = out.ratio.detach()
        self.vtrace_ratio[index] = ratio
        return {"finite": finite, "ratio": ratio, "policy_loss": out.pg_loss.detach(), "value_loss": out.v_loss.detach(),
                "entropy": out.entropy.detach(), "approx_kl": out.approx_kl, "grad_norm": grad_norm.detach(),
                "clipfrac": out.clipfrac}

    def check_finite(self, flags: list[float], minibatches: int) -> None:
        """Stop at the first quantity that is not a finite number (NonFiniteError), before anything is saved."""
        names = ("the policy loss", "the value loss", "the entropy", "the gradient norm")
        bad = [i for i, ok in enumerate(flags) if ok < 1]  # a mean over ranks: below 1 if any rank saw it
        if not bad:
            return
        if bad[0] < 4 * minibatches:
            what = f"{names[bad[0] % 4]} of minibatch {bad[0] // 4 + 1} of {minibatches}"
        else:
            what = f"the weights ({next(n for n, p in self.policy.named_parameters() if not p.isfinite().all())})"
        saved = (f"the last good checkpoint is {self.checkpoint_path} (update {self.saved_update})"
                 if self.saved_update is not None else "no checkpoint was saved yet")
        raise NonFiniteError(f"update {self.update + 1}: {what} is not a finite number. The run stopped without saving: "
                             f"{saved}. Lower --learning-rate or --max-grad-norm, or pass --nonfinite skip to skip "
                             "such minibatches")

    def set_learning_rate(self) -> float:
        """cfg.learning_rate, decayed linearly to 0 over training with cfg.anneal_lr."""
        lr = self.cfg.learning_rate * (1 - self.update / self.num_updates if self.cfg.anneal_lr else 1)
        for group in self.optimizer.param_groups:
            if isinstance(group["lr"], torch.Tensor):  # a recorded update reads it from the device
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
        return lr

    def advantages(self, vtrace_ratio: torch.Tensor) -> torch.Tensor:
        """GAE with V-trace clipping of every step in the buffer (trainer/advantage.py). With the horizon bootstrap
        the step after the last column joins as one more column, so the last column gets a real advantage."""
        cfg, data, T = self.cfg, self.buffer.data, self.cfg.bptt
        x = {k: data[k] for k in ("values", "rewards", "dones", "truncateds", "final_values")}
        if cfg.horizon_bootstrap:
            x = {k: torch.cat([v, self.buffer.horizon[k][:, None]], 1) for k, v in x.items()}
            vtrace_ratio = torch.cat([vtrace_ratio, torch.ones_like(vtrace_ratio[:, :1])], 1)  # never read: no successor
        final = x["final_values"] if cfg.truncation_bootstrap == "final" else None
        return compute_advantages(x["values"], x["rewards"], x["dones"], x["truncateds"], vtrace_ratio,
                                  cfg.gamma, cfg.gae_lambda, cfg.rho_clip, cfg.c_clip, final)[:, :T]

    def minibatches(self, vtrace_ratio: torch.Tensor):
        """One epoch of minibatches: (segment index, importance weights, the segments' advantages). Each minibatch's
        advantages are computed when it is drawn, from the ratios the minibatches before it left in
        `vtrace_ratio`: iterate it lazily, updating `vtrace_ratio` in between."""
        cfg, segments, count = self.cfg, self.buffer.segments, self.minibatch_segments
        beta = prio_beta(cfg.prio_beta0, cfg.prio_alpha, self.update, self.num_updates)
        shuffled = shuffled_minibatches(segments, count, self.sampler, self.device) if cfg.sampling == "shuffled" else None
        for m in range(segments // count):
            advantages = self.advantages(vtrace_ratio)
            if shuffled is None:
                index, weights = sample_segments(advantages, count, cfg.prio_alpha, beta, self.sampler)
            else:
                index, weights = shuffled[m], torch.ones(count, device=self.device)
            yield index, weights, advantages[index]

    def health(self) -> dict[str, torch.Tensor]:
        """Cheap signs of saturation or blow-up, on the device: each part's weight norm, the LSTM cell's mean |c|
        over every agent and layer where the rollout left it (a saturated cell sits near its limit), and the
        fraction of the encoder's output units (each policy's encoder ends in a ReLU) that are 0 for every agent's
        current observation: no gradient reaches the observation through them, and at 1 the policy acts blind."""
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

    def autocast(self) -> torch.autocast:
        """bf16 autocast around the policy when cfg.bf16, else a no-op. Without its cache of cast weights under
        cuda_graphs: a graph recorded while the cache held them would replay without casting the updated weights."""
        return torch.autocast(self.device.type, torch.bfloat16, enabled=self.cfg.bf16,
                              cache_enabled=not self.cfg.cuda_graphs)

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
                "global_step": self.global_step, "policy": self.policy.state_dict(),
                "optimizer": self.optimizer.state_dict(), "ranks": ranks}

    def load_state_dict(self, state: dict) -> None:
        parts = state.get("ranks") or [state]  # a checkpoint from before ranks kept its one rank's part at the top
        if len(parts) != self.ranks.world:
            raise ValueError(f"the checkpoint was written by {len(parts)} rank(s), each with its own envs, memory and "
                             f"random streams; resume it with the same number of processes (torchrun "
                             f"--nproc-per-node {len(parts)}), not {self.ranks.world}")
        self.update, self.global_step = state["update"], state["global_step"]
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


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
    """1 - Var(R - V) / Var(R): 1 when the critic predicts every return, 0 or less when it predicts nothing."""
    values, returns = values.flatten(), returns.flatten()
    spread = returns.var()
    return torch.where(spread > 0, 1 - (returns - values).var() / spread, torch.nan)
