"""PufferLib peer of minippo's trainer (issue #7): PufferLib's own trainer, `PuffeRL` (pufferlib-core 3.0.23), training
the Fast architecture on the real MettaGrid arena. The env is the package's `MettaGridPufferEnv` on our task
definition (envs/mettagrid.py `build_task`), vectorised by PufferLib's `Serial` backend (one process: faster than its
multiprocess backend on 2 cores). The policy is Fast's layers in PufferLib's policy shape. See README.md here.

    benchmarks/.venv-puffer/bin/python benchmarks/pufferlib/train_fast.py --threads 2

Prints progress lines, then ONE final JSON line (sps = median agent steps/s over the timed updates).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import os
import statistics
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)  # the repo's envs/ and policies/

import torch  # noqa: E402
from mettagrid.envs.mettagrid_puffer_env import MettaGridPufferEnv  # noqa: E402
from mettagrid.simulator import Simulator  # noqa: E402
from pufferlib import pufferl, vector  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks.peer_options import parse_peer_args, peer_parser  # noqa: E402
from envs.mettagrid import MettaGridConfig, build_task, task_spec  # noqa: E402
from policies.base import metta_heads  # noqa: E402
from policies.fast import FastEncoder  # noqa: E402

HIDDEN, LAYERS = 128, 2


class FastPuffer(nn.Module):
    """Fast (policies/fast.py: FastEncoder, a 2-layer LSTM 128, metta_heads; the same initialisation) in PufferLib's
    policy shape. `forward_eval` steps one LSTMCell per layer, tied to the LSTM's weights (what PufferLib's
    LSTMWrapper does for its one layer), on state packed as [agents, layers x hidden] because PuffeRL allocates the
    acting state as [agents, hidden_size]. `forward` unrolls the LSTM over [segments, bptt] from zero state."""

    def __init__(self, spec):
        super().__init__()
        self.hidden_size = LAYERS * HIDDEN
        self.encoder = FastEncoder(spec, hidden=HIDDEN)
        self.lstm = nn.LSTM(HIDDEN, HIDDEN, LAYERS)
        for name, p in self.lstm.named_parameters():  # Fast's LSTM init (policies/memory.py, lstm_init="metta")
            nn.init.orthogonal_(p) if "weight" in name else nn.init.constant_(p, 1.0)
        self.cells = nn.ModuleList(nn.LSTMCell(HIDDEN, HIDDEN) for _ in range(LAYERS))
        for layer, cell in enumerate(self.cells):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                setattr(cell, name, getattr(self.lstm, f"{name}_l{layer}"))
        self.critic, self.actor = metta_heads(spec, HIDDEN)

    def forward_eval(self, obs: torch.Tensor, state: dict):
        x = self.encoder(obs)
        h = state["lstm_h"].view(len(obs), LAYERS, HIDDEN)
        c = state["lstm_c"].view(len(obs), LAYERS, HIDDEN)
        hs, cs = [], []
        for layer, cell in enumerate(self.cells):
            x, c_layer = cell(x, (h[:, layer], c[:, layer]))
            hs.append(x)
            cs.append(c_layer)
        state["lstm_h"], state["lstm_c"] = torch.cat(hs, 1), torch.cat(cs, 1)
        return self.actor(x), self.critic(x)

    def forward(self, obs: torch.Tensor, state: dict):
        B, T = obs.shape[:2]
        x = self.encoder(obs.flatten(0, 1)).view(B, T, HIDDEN).transpose(0, 1)
        x = self.lstm(x)[0].transpose(0, 1).reshape(B * T, HIDDEN)
        return self.actor(x), self.critic(x).view(B, T)


def puffer_config(args, agents: int, data_dir: str) -> dict:
    """PuffeRL's settings, matched to minippo's cpu preset (bptt 64, minibatch 1,024, 1 epoch, lr 3e-3, Metta's
    PPO coefficients, uniform segment sampling: prio_alpha 0)."""
    return dict(
        seed=args.seed, device=args.device, torch_deterministic=False, cpu_offload=False, use_rnn=True,
        batch_size=agents * args.bptt, bptt_horizon=args.bptt, minibatch_size=args.minibatch_size,
        max_minibatch_size=args.minibatch_size, update_epochs=args.epochs, total_timesteps=10 ** 12,
        optimizer="adam", learning_rate=args.lr, adam_beta1=0.9, adam_beta2=0.999, adam_eps=1e-12, anneal_lr=False,
        precision="bfloat16" if args.bf16 else "float32", compile=args.compile, compile_mode="default",
        compile_fullgraph=False,
        gamma=0.977, gae_lambda=0.916, vtrace_rho_clip=1.0, vtrace_c_clip=1.0, clip_coef=0.1, vf_clip_coef=0.1,
        vf_coef=0.44, ent_coef=0.0021, max_grad_norm=0.5, prio_alpha=0.0, prio_beta0=0.6,
        checkpoint_interval=10 ** 9, data_dir=data_dir, env="mettagrid.arena")


def main() -> None:
    ap = peer_parser(__doc__, 16, "MettaGrid simulations (24 agents each)")
    ap.add_argument("--bf16", action="store_true", help="PuffeRL's precision=bfloat16 (autocast while acting and training)")
    ap.add_argument("--compile", action="store_true", help="PuffeRL's compile=True (torch.compile of the training forward)")
    ap.add_argument("--dashboard", action="store_true", help="show PuffeRL's terminal dashboard (hidden by default; "
                    "it is still drawn, so its cost stays in the timing)")
    args = parse_peer_args(ap)

    task = MettaGridConfig(task="arena", num_envs=args.num_envs, seed=args.seed)
    game = build_task(task)
    spec = task_spec(game)

    def make_env(buf=None, seed=0):
        return MettaGridPufferEnv(Simulator(), game, buf=buf, seed=seed)

    vecenv = vector.make(make_env, backend=vector.Serial, num_envs=args.num_envs, seed=args.seed)
    N = vecenv.num_agents
    policy = FastPuffer(spec).to(args.device)
    params = sum(p.numel() for p in policy.parameters())
    version = importlib.metadata.version("pufferlib-core")
    dashboard = contextlib.nullcontext() if args.dashboard else contextlib.redirect_stdout(io.StringIO())
    print(f"pufferlib-core {version} | torch {torch.__version__} | {params:,} parameters | {N} agents x bptt "
          f"{args.bptt} = {N * args.bptt:,} steps per update | minibatch {args.minibatch_size} | threads "
          f"{torch.get_num_threads()}", flush=True)

    rates, eval_rates, train_rates = [], [], []
    with tempfile.TemporaryDirectory() as data_dir:
        with dashboard:
            trainer = pufferl.PuffeRL(puffer_config(args, N, data_dir), vecenv, policy)
        try:
            for u in range(args.warmup + args.updates):
                steps0 = trainer.global_step
                t0 = time.perf_counter()
                with dashboard:
                    trainer.evaluate()
                t1 = time.perf_counter()
                with dashboard:
                    logs = trainer.train()
                t2 = time.perf_counter()
                steps = trainer.global_step - steps0
                timed = u >= args.warmup
                if timed:
                    rates.append(steps / (t2 - t0))
                    eval_rates.append(steps / (t1 - t0))
                    train_rates.append(steps / (t2 - t1))
                kl = trainer.losses.get("approx_kl", float("nan")) if logs is not None else float("nan")
                print(f"update {u + 1}{'' if timed else ' (warm-up)'} | SPS {steps / (t2 - t0):,.0f} | evaluate "
                      f"{t1 - t0:.2f}s | train {t2 - t1:.2f}s | approx_kl {kl:.4f}", flush=True)
        finally:
            trainer.utilization.stop()  # its monitor thread is not a daemon: without this the process never exits
            vecenv.close()
    print(json.dumps({
        "peer": "pufferlib", "version": version, "torch": torch.__version__, "device": args.device,
        "threads": torch.get_num_threads(), "sps": round(statistics.median(rates)),
        "rollout_sps": round(statistics.median(eval_rates)), "update_sps": round(statistics.median(train_rates)),
        "sps_per_update": [round(r) for r in rates], "params": params, "agents": N, "batch": N * args.bptt,
        "minibatch": args.minibatch_size, "epochs": args.epochs, "bf16": args.bf16, "compile": args.compile,
        "updates": args.updates, "warmup": args.warmup,
    }), flush=True)


if __name__ == "__main__":
    try:
        main()
    except Exception:  # PuffeRL's monitor thread (started in its constructor) would keep a failed run alive
        traceback.print_exc()
        sys.stdout.flush()
        os._exit(1)
