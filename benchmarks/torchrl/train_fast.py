"""TorchRL peer of minippo's trainer (issue #7): recurrent PPO on our `arena` GridEnv with the Fast architecture,
built from TorchRL's own parts: `LSTMModule` (sequential while acting, `set_recurrent_mode(True)` while training),
`ProbabilisticActor` over a `Categorical`, `GAE` and `ClipPPOLoss`, minibatches of whole segments from a
`ReplayBuffer` with `SamplerWithoutReplacement`. Collection is a plain Python loop calling the env's `step` and
the TorchRL policy module (no `EnvBase` wrapper, no collector). See README.md next to this file.

    benchmarks/.venv-torchrl/bin/python benchmarks/torchrl/train_fast.py --threads 2

Prints progress lines, then ONE final JSON line (sps = median agent steps/s over the timed updates).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)  # the repo's envs/ and policies/

import torch  # noqa: E402
import torchrl  # noqa: E402
from tensordict import TensorDict  # noqa: E402
from tensordict.nn import TensorDictModule, TensorDictSequential  # noqa: E402
from torch import nn  # noqa: E402
from torchrl.data import LazyTensorStorage, ReplayBuffer  # noqa: E402
from torchrl.data.replay_buffers.samplers import SamplerWithoutReplacement  # noqa: E402
from torchrl.envs.utils import ExplorationType, set_exploration_type  # noqa: E402
from torchrl.modules import LSTMModule, ProbabilisticActor, ValueOperator, set_recurrent_mode  # noqa: E402
from torchrl.objectives import ClipPPOLoss  # noqa: E402
from torchrl.objectives.value import GAE  # noqa: E402

from benchmarks.peer_options import parse_peer_args, peer_parser  # noqa: E402
from envs import make_env  # noqa: E402
from policies.actions import ActionTable  # noqa: E402
from policies.base import metta_heads  # noqa: E402
from policies.fast import FastEncoder  # noqa: E402

HIDDEN = 128


class Encoder(nn.Module):
    """Our FastEncoder over any leading batch dims ([N] acting, [B, T] training)."""

    def __init__(self, spec):
        super().__init__()
        self.net = FastEncoder(spec, hidden=HIDDEN)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        lead = obs.shape[:-2]
        return self.net(obs.reshape(-1, *obs.shape[-2:])).view(*lead, HIDDEN)


def build(env, device):
    """The Fast policy as TorchRL modules: a shared trunk (encoder + LSTMModule), an actor head and a critic head.
    The same layers and initialisation as policies.fast.Fast (lstm_init "metta": orthogonal weights, every bias 1)."""
    spec = env.spec
    critic, actor = metta_heads(spec, HIDDEN)
    encoder = TensorDictModule(Encoder(spec), in_keys=["env_obs"], out_keys=["embed"])
    lstm = LSTMModule(input_size=HIDDEN, hidden_size=HIDDEN, num_layers=2,
                      in_keys=["embed", "recurrent_state_h", "recurrent_state_c"],
                      out_keys=["features", ("next", "recurrent_state_h"), ("next", "recurrent_state_c")])
    for name, p in lstm.lstm.named_parameters():  # Fast's LSTM init (policies/memory.py, lstm_init="metta")
        nn.init.orthogonal_(p) if "weight" in name else nn.init.constant_(p, 1.0)
    actor_head = TensorDictModule(actor, in_keys=["features"], out_keys=["logits"])
    # one call of the trunk per forward: the actor is trunk + actor head + Categorical; the critic head reads the
    # trunk's "features" that the actor wrote (ClipPPOLoss's documented single-trunk pattern)
    policy = ProbabilisticActor(TensorDictSequential(encoder, lstm, actor_head), in_keys=["logits"],
                                out_keys=["action"], distribution_class=torch.distributions.Categorical,
                                return_log_prob=True)
    value_head = ValueOperator(critic, in_keys=["features"])  # -> "state_value" [..., 1]
    return policy.to(device), value_head.to(device), lstm


def main() -> None:
    ap = peer_parser(__doc__, 64, "arena maps (6 agents each)")
    args = parse_peer_args(ap)
    device = torch.device(args.device)

    env = make_env("arena", num_envs=args.num_envs, seed=args.seed, device=str(device))
    N, T = env.num_agents, args.bptt
    if args.minibatch_size % T or N % (args.minibatch_size // T):
        sys.exit(f"minibatch_size must be bptt x a divisor of {N} agents")
    seg_per_mb = args.minibatch_size // T
    table = ActionTable(env.spec).to(device)  # categorical index <-> (type, arg) pair the env takes
    policy, value_head, lstm = build(env, device)
    params = sum(p.numel() for p in {*policy.parameters(), *value_head.parameters()})

    gae = GAE(gamma=0.977, lmbda=0.916, value_network=None, auto_reset_env=True)  # values come from acting
    loss_fn = ClipPPOLoss(policy, value_head, clip_epsilon=0.1, entropy_coeff=0.0021,
                          critic_coeff=0.5 * 0.44,  # torchrl's "l2" is (v - target)^2; minippo's 0.44 x 0.5 (...)^2
                          loss_critic_type="l2", clip_value=0.1, normalize_advantage=True)
    loss_fn.set_keys(sample_log_prob="action_log_prob")
    optim = torch.optim.Adam(loss_fn.parameters(), lr=args.lr, eps=1e-12)
    rb = ReplayBuffer(storage=LazyTensorStorage(N, device=device), sampler=SamplerWithoutReplacement(),
                      batch_size=seg_per_mb)

    # acting state: the current observation with the policy's outputs and the LSTM state it started from
    def act(obs_td: TensorDict, is_init: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> TensorDict:
        keep = (~is_init).float()[:, None, None]  # what TorchRL's TensorDictPrimer does on reset: zero state
        td = TensorDict({"env_obs": obs_td["env_obs"], "is_init": is_init[:, None],
                         "recurrent_state_h": h * keep, "recurrent_state_c": c * keep}, batch_size=[N], device=device)
        policy(td)
        value_head(td)
        return td

    zeros = torch.zeros(N, 2, HIDDEN, device=device)
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
        cur = act(env.reset(), torch.ones(N, dtype=torch.bool, device=device), zeros, zeros)

    def collect() -> TensorDict:
        nonlocal cur
        steps = []
        with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
            for _ in range(T):
                out = env.step(table.to_pairs(cur["action"]))
                is_init = out["dones"] | out["truncateds"]
                nxt = act(out, is_init, cur["next", "recurrent_state_h"], cur["next", "recurrent_state_c"])
                steps.append(TensorDict({
                    "env_obs": cur["env_obs"], "is_init": cur["is_init"], "action": cur["action"],
                    "action_log_prob": cur["action_log_prob"], "state_value": cur["state_value"],
                    "recurrent_state_h": cur["recurrent_state_h"], "recurrent_state_c": cur["recurrent_state_c"],
                    "next": {"reward": out["rewards"][:, None], "terminated": out["dones"][:, None],
                             "truncated": out["truncateds"][:, None], "done": is_init[:, None],
                             "state_value": nxt["state_value"]},
                }, batch_size=[N], device=device))
                cur = nxt
        return torch.stack(steps, 1)  # [agents, T]: one segment per agent

    def learn(data: TensorDict) -> dict[str, float]:
        with torch.no_grad():
            gae(data)
        rb.empty()
        rb.extend(data)
        logs = []
        for _ in range(args.epochs):
            for _ in range(N // seg_per_mb):
                mb = rb.sample()  # [segments, T]
                with set_recurrent_mode(True):
                    out = loss_fn(mb)
                loss = out["loss_objective"] + out["loss_critic"] + out["loss_entropy"]
                optim.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(loss_fn.parameters(), 0.5)
                optim.step()
                logs.append(out.select("loss_objective", "loss_critic", "entropy", "kl_approx", "clip_fraction").detach()
                            .set("split", mb["is_init"][:, 1:].any().float()))  # packed-sequence LSTM path taken
        return {k: v.item() for k, v in torch.stack(logs).float().mean(0).items()}

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    print(f"torchrl {torchrl.__version__} | torch {torch.__version__} | {params:,} parameters | {N} agents x bptt {T} "
          f"= {N * T:,} steps per update | minibatch {seg_per_mb} segments | threads {torch.get_num_threads()}",
          flush=True)
    rates, roll_rates, upd_rates, returns = [], [], [], []
    for u in range(args.warmup + args.updates):
        sync()
        t0 = time.perf_counter()
        data = collect()
        sync()
        t1 = time.perf_counter()
        logs = learn(data)
        sync()
        t2 = time.perf_counter()
        stats = env.episode_stats()
        if stats:
            returns.append(stats["return"])
        timed = u >= args.warmup
        if timed:
            rates.append(N * T / (t2 - t0))
            roll_rates.append(N * T / (t1 - t0))
            upd_rates.append(N * T / (t2 - t1))
        print(f"update {u + 1}{'' if timed else ' (warm-up)'} | SPS {N * T / (t2 - t0):,.0f} | rollout "
              f"{t1 - t0:.2f}s | learn {t2 - t1:.2f}s | return {stats.get('return', float('nan')):.3f} | "
              f"kl {logs['kl_approx']:.4f} | entropy {logs['entropy']:.3f} | minibatches split at episode starts "
              f"{logs['split']:.0%}", flush=True)
    mean_return = sum(returns) / len(returns) if returns else None
    print(f"mean episode return over the run: {mean_return}", flush=True)
    print(json.dumps({
        "peer": "torchrl", "version": torchrl.__version__, "torch": torch.__version__, "device": str(device),
        "threads": torch.get_num_threads(), "sps": round(statistics.median(rates)),
        "rollout_sps": round(statistics.median(roll_rates)), "update_sps": round(statistics.median(upd_rates)),
        "sps_per_update": [round(r) for r in rates], "params": params, "agents": N, "batch": N * T, "minibatch": args.minibatch_size, "epochs": args.epochs,
        "updates": args.updates, "warmup": args.warmup, "mean_episode_return": mean_return,
    }), flush=True)


if __name__ == "__main__":
    main()
