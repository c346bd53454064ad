"""Recurrent PPO, the algorithm alone, in the order a reader expects:

    for each update:
        reset_memory; roll out bptt steps of every agent into the segmented buffer (no grad)
        returns = advantages (ratio 1) + values
        for each epoch, for each minibatch:
            advantages with the ratios earlier minibatches left (V-trace); sample whole segments
            reset_memory; recompute log-probs, values, entropy over the segments
            loss = clipped surrogate (normalised advantage x importance weight) + clipped value - entropy
            backward; clip the gradient norm; optimizer step; clip_weights

The run around it (building the env and policy, the loop, logging, checkpoints, signals, ranks, what to do with a
number that is not finite, CUDA graphs) is trainer/loop.py's Trainer.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
from tensordict import TensorDict

from experience.buffer import SegmentedBuffer
from experience.sampling import prio_beta, sample_segments, shuffled_minibatches
from policies.base import RecurrentPolicy
from trainer.advantage import compute_advantages
from trainer.config import TrainConfig
from trainer.loss import PPOLoss, ppo_loss
from trainer.update_clip import UpdateClippedAdam


class PPO:
    def __init__(self, cfg: TrainConfig, env, policy: RecurrentPolicy, seed: int, batch_size: int):
        """`env` and `policy` on one device; `batch_size`: agent steps per update over every process."""
        self.cfg, self.env, self.policy, self.device = cfg, env, policy, next(policy.parameters()).device
        self.act = policy  # what acts in the rollout
        self.optimizer = UpdateClippedAdam(param_groups(policy, cfg.encoder_lr_scale), max_rms=cfg.adam_update_clip,
                                           lr=cfg.learning_rate, eps=cfg.adam_eps, fused=True)
        self.buffer = SegmentedBuffer(env.spec, env.num_agents, cfg.bptt, self.device,
                                      (policy.memory.num_layers, policy.memory.hidden_size))
        self.returns = torch.zeros_like(self.buffer.data["values"])  # the update's value targets
        self.vtrace_ratio = torch.ones_like(self.returns)  # π/μ per step, as the last minibatch that held it left it
        self.train_step = self.minibatch_step  # one gradient step on a minibatch
        self.carried: dict = {}  # carry mode: the memory the last rollout ended with, where the next one starts
        self.sampler = torch.Generator(self.device).manual_seed(seed)
        self.batch_size = batch_size
        self.minibatch_segments = cfg.segments_per_minibatch(env.num_agents)
        self.num_updates = cfg.total_steps // batch_size
        self.update = 0
        self.global_step = 0
        self.learning_rate = cfg.learning_rate
        self.advantage_std_peak = 0.0  # the largest spread of an update's advantages so far (lr_follows_advantages)
        self.next_obs = env.reset()

    # --- the rollout --------------------------------------------------------------------------------
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

    # --- the update ---------------------------------------------------------------------------------
    def learn(self) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """One PPO update on the rollout in the buffer. Returns, on the device: the update's mean statistics, and
        whether each minibatch's policy loss, value loss, entropy and gradient norm (`[minibatches, 4]`) and each
        weight (`[parameters]`) are finite numbers."""
        cfg, data = self.cfg, self.buffer.data
        self.vtrace_ratio.fill_(1)
        self.returns.copy_(self.advantages(self.vtrace_ratio) + data["values"])
        advantage_std = self.advantage_std()
        self.set_learning_rate(advantage_std)
        stats: dict[str, list[torch.Tensor]] = defaultdict(list)
        finite: list[torch.Tensor] = []
        for _ in range(cfg.update_epochs):
            for index, weights, advantages in self.minibatches(self.vtrace_ratio):
                step = self.train_step(index, weights, advantages)
                if step is None:  # skipped (trainer/loop.py Trainer.skip_step)
                    stats["skipped_minibatches"].append(torch.ones((), device=self.device))
                    continue
                finite.append(step.pop("finite"))
                ratio = step.pop("ratio")
                if not stats:  # before any step: 0 exactly when training recomputes what acting did
                    stats["ratio_deviation_first_minibatch"].append((ratio - 1).abs().max())
                for k, v in step.items():
                    stats[k].append(v)  # statistics stay on the device until the update ends
        stats["explained_variance"].append(explained_variance(data["values"], self.returns))
        stats["advantage_std"].append(advantage_std)
        stats["skipped_minibatches"].append(torch.zeros((), device=self.device))  # summed, not averaged, below
        self.update += 1
        means = {k: torch.stack(v).float().mean() if k != "skipped_minibatches" else torch.stack(v).sum()
                 for k, v in stats.items()}
        finite_steps = torch.stack(finite) if finite else torch.ones(0, 4, dtype=torch.bool, device=self.device)
        return means, finite_steps, torch.stack([p.isfinite().all() for p in self.policy.parameters()])

    def minibatch_loss(self, index: torch.Tensor, weights: torch.Tensor, advantages: torch.Tensor) -> PPOLoss:
        """The PPO loss on segments `index`, recomputed from each segment's first state (trainer/loss.py's PPOLoss)."""
        cfg, minibatch = self.cfg, self.buffer.data[index]
        self.policy.reset_memory()
        if cfg.memory == "carry":  # each segment starts from the state acting started it from
            self.policy.set_memory({0: self.buffer.state_of(index)})
        with self.autocast():
            new = self.policy(minibatch.select("env_obs", "actions", "dones", "truncateds").clone(False))
        return ppo_loss(new["act_log_prob"], minibatch["act_log_prob"], advantages, weights,
                        new["values"], minibatch["values"], self.returns[index], new["entropy"],
                        clip_coef=cfg.clip_coef, vf_clip_coef=cfg.vf_clip_coef, vf_coef=cfg.vf_coef,
                        ent_coef=cfg.ent_coef, kl_coef=cfg.kl_coef, norm_adv=cfg.norm_adv)

    def minibatch_step(self, index: torch.Tensor, weights: torch.Tensor,
                       advantages: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """One gradient step on segments `index`: the PPO loss, backward, the clipped gradient, the optimizer's step
        and clip_weights; the step's statistics (on the device), or None when `skip_step` skipped it."""
        cfg, out = self.cfg, self.minibatch_loss(index, weights, advantages)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        self.reduce_gradients()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
        finite = torch.stack([out.pg_loss, out.v_loss, out.entropy, grad_norm]).isfinite()
        if self.skip_step(finite):
            return None
        self.optimizer.step()
        self.policy.clip_weights()

        ratio = out.ratio.detach()
        self.vtrace_ratio[index] = ratio
        return {"finite": finite, "ratio": ratio, "policy_loss": out.pg_loss.detach(), "value_loss": out.v_loss.detach(),
                "entropy": out.entropy.detach(), "approx_kl": out.approx_kl, "grad_norm": grad_norm.detach(),
                "clipfrac": out.clipfrac}

    def reduce_gradients(self) -> None:
        """Where several processes train together, their gradients are averaged here (trainer/loop.py)."""

    def skip_step(self, finite: torch.Tensor) -> bool:
        """Whether to skip the optimizer step, given which of the step's numbers are finite: never, here."""
        return False

    def advantage_std(self) -> torch.Tensor:
        """The spread (standard deviation) of the update's advantages, at ratio 1 and before any normalisation,
        over every step of the rollout (under torchrun: the mean of the ranks' spreads)."""
        return (self.returns - self.buffer.data["values"]).float().std()

    def set_learning_rate(self, advantage_std: torch.Tensor) -> float:
        """cfg.learning_rate, decayed linearly to 0 over training with cfg.anneal_lr; with cfg.lr_follows_advantages,
        times `advantage_std` divided by the largest spread so far, which this call raises (one read per update)."""
        cfg = self.cfg
        lr = cfg.learning_rate * (1 - self.update / self.num_updates if cfg.anneal_lr else 1)
        if cfg.lr_follows_advantages:
            spread = float(advantage_std)
            if math.isfinite(spread):  # a spread that is not a number leaves the peak, and this update's rate, alone
                self.advantage_std_peak = max(self.advantage_std_peak, spread)
                lr *= spread / self.advantage_std_peak if self.advantage_std_peak > 0 else 1.0
        for group in self.optimizer.param_groups:
            group_lr = lr * group.get("lr_scale", 1.0)
            if isinstance(group["lr"], torch.Tensor):  # a recorded update reads it from the device
                group["lr"].fill_(group_lr)
            else:
                group["lr"] = group_lr
        self.learning_rate = lr
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

    def autocast(self) -> torch.autocast:
        """bf16 autocast around the policy when cfg.bf16, else a no-op. Without its cache of cast weights under
        cuda_graphs: a graph recorded while the cache held them would replay without casting the updated weights."""
        return torch.autocast(self.device.type, torch.bfloat16, enabled=self.cfg.bf16,
                              cache_enabled=not self.cfg.cuda_graphs)


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
    """1 - Var(R - V) / Var(R): 1 when the critic predicts every return, 0 or less when it predicts nothing."""
    values, returns = values.flatten(), returns.flatten()
    spread = returns.var()
    return torch.where(spread > 0, 1 - (returns - values).var() / spread, torch.nan)


def param_groups(policy: RecurrentPolicy, encoder_lr_scale: float) -> list[dict]:
    """The optimizer's parameter groups: one, or the encoder's apart with its own rate (set_learning_rate scales it)."""
    if encoder_lr_scale == 1:
        return [{"params": list(policy.parameters())}]
    encoder = {id(p) for p in policy.encoder.parameters()}
    return [{"params": [p for p in policy.parameters() if id(p) in encoder], "lr_scale": encoder_lr_scale},
            {"params": [p for p in policy.parameters() if id(p) not in encoder]}]
