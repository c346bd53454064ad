"""Take apart the update that breaks a solved run: replay a run to it, log what changes in it, and re-run it under
each candidate cure.

    python scripts/collapse_probe.py --policy example --seed 5 --train-args="--num-envs 256"
    python scripts/collapse_probe.py --policy fast --seed 4 --at-update 42 --variants base eps1e-5 target_kl0.02

The run is scripts/train.py's (--preset, memory unless --env says otherwise, with --train-args), one torch thread,
replayed update by update in this process: runs are deterministic on one machine, so it follows the very run a
learning benchmark made with the same options, and the per-update lines show it (return, approx_kl).
Every minibatch of every update is logged (minibatches.csv): the advantages before normalisation (the policy loss
divides them by their standard deviation), the value targets and the critic's error, the ratio's spread, the
gradient norm, which parameter moved most relative to its size and Adam's second moment there, the largest RMS of
g^2 / v over the parameters (trainer/update_clip.py: far above 1 where a gradient outgrows its history), and the
LSTM's cell.
On a task with a cue, every update also logs how the policy carries it (updates.csv's cue_ columns:
scripts/cue_signal.py's measure on 256 maps of its own, the same maps after every update): the cue's gap in the
memory and in the actions on the first free step. Each variant's re-run of the breaking update measures it after
every minibatch (variants.csv: after the update, and the lowest action gap within it) and logs its minibatches
(variant_minibatches.csv, with the norm of the gradient each loss term gives each part of the policy before the
step: grad_<part>_<policy|value|entropy>), and parts.csv says which
parts of the policy carry what the breaking update (base) did to it: its change applied to one part alone, and to
every part but that one.

The breaking update is --at-update, or else the first update after the return reached --solved whose approx_kl
exceeds --kl. From the state before it (a snapshot of everything a checkpoint holds), each variant re-runs that
update and --follow more, and variants.csv says what each did: the update's approx_kl, its largest minibatch KL,
and the return of the rollouts after it. A variant changes the update from inside, as an option would:

    base            the run as it was (must repeat it exactly)
    epsX            Adam's epsilon X (e.g. eps1e-8, eps1e-5)
    lrX             learning rate X (e.g. lr5e-4)
    beta1X, beta2X  Adam's beta1 or beta2 X (e.g. beta2_0.99; beta1_0.99+beta2_0.99: equal betas)
    entX            entropy bonus weight X (e.g. ent0)
    klX             a KL penalty of weight X in the loss (--kl-coef; e.g. kl1)
    no_norm_adv     advantages as computed, not normalised per minibatch
    vf_clipX        value clip X around the rollout's values (e.g. vf_clip0.2)
    target_klX      skip the update's remaining minibatches once their mean approx_kl passes X (e.g. target_kl0.02)
    scale_returns   advantages centred per minibatch and divided by the spread of the update's value targets
                    (return-based scaling), not their own
    scale_peak      advantages centred per minibatch and divided by the larger of their own spread and the largest
                    spread of any earlier update (mean over its minibatches)
    update_clipX    each tensor's Adam step divided by max(1, RMS(g^2 / v) / X) (--adam-update-clip X; e.g.
                    update_clip1)
    reshuffleX      the same update with its minibatches drawn again, from sampler seed X (another draw of its
                    segments): a control, since any change to a chaotic run may avoid one bad update by chance
    a+b             both changes
"""

from __future__ import annotations

import copy
import csv
import os
import shlex
import sys
import tempfile
from dataclasses import dataclass, field

import torch
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from cue_signal import cue_signal, has_cue  # noqa: E402
from train import parse_config  # noqa: E402

from envs import make_env  # noqa: E402
from trainer.config import PRESETS, TrainConfig  # noqa: E402
from trainer.loop import Trainer  # noqa: E402
from trainer.update_clip import update_rms  # noqa: E402


@dataclass
class Args:
    policy: str = "fast"
    seed: int = 0
    env: str = "memory"
    preset: str = "cpu"
    """scripts/train.py's preset."""
    total_steps: int = 2_000_000
    """The run's length (it sets the number of updates, which an annealed learning rate reads)."""
    train_args: str = "--num-envs 256"
    """More train.py options."""
    at_update: int = 0
    """The update to take apart (1-based, as train.py prints it); 0: the first past --solved with approx_kl > --kl."""
    solved: float = 0.95
    """Without --at-update: the return after which a run counts as solved."""
    kl: float = 0.1
    """Without --at-update: the approx_kl that marks the breaking update."""
    follow: int = 6
    """Updates each variant runs after the breaking one."""
    variants: list[str] = field(default_factory=lambda: [
        "base", "reshuffle1", "reshuffle2", "eps1e-8", "eps1e-5", "lr5e-4", "beta2_0.99", "no_norm_adv", "vf_clip0.2", "target_kl0.02"])
    """The variants to re-run the breaking update under (the list above)."""
    out: str = "runs/collapse_probe"
    """Folder of the CSVs and the snapshot (one per probed run: two probes at once need two folders)."""
    reuse_snapshot: bool = False
    """Start from --out's snapshot.pt (the state before the breaking update, saved by an earlier probe of the same
    run) instead of replaying the run to it."""


CUE_MAPS = 256  # maps the cue is measured on after each update (about half show each cue)


class ProbedTrainer(Trainer):
    """The trainer with every minibatch's step measured from outside; `rows` collects them. `target_kl` > 0 skips
    the rest of an update once the mean approx_kl of its minibatches passes it."""

    def __init__(self, cfg: TrainConfig):
        super().__init__(cfg)
        self.rows: list[dict] = []
        self.target_kl = 0.0
        self.adv_scale = ""  # "", "returns" or "peak": see the variants
        self.peak_spread = 0.0  # the largest advantage spread (mean over an update's minibatches) of any update so far
        self.update_kls: list[float] = []
        self.update_rows = 0
        self.measure_each_minibatch = False  # the re-runs: the cue after, and the gradient's sources before, each minibatch
        self.update_action_gaps: list[float] = []
        self.train_step = self.probed_step
        # the cue as the policy carries it after each update, on maps of its own (the run's env is not touched)
        self.cue_env = (make_env(cfg.env, num_envs=CUE_MAPS, seed=cfg.seed, device=str(self.device),
                                 **cfg.env_overrides) if has_cue(self.env) else None)

    def learn(self):
        self.update_kls, self.update_rows, self.update_action_gaps = [], len(self.rows), []  # this update's own
        return super().learn()

    def probed_step(self, index, weights, advantages):
        if self.target_kl and self.update_kls and sum(self.update_kls) / len(self.update_kls) > self.target_kl:
            return None
        before = self.weights()
        scaled = advantages
        if self.adv_scale:  # the variant's own scaling; the loss then takes them as given (norm_adv off)
            scale = self.returns.std() if self.adv_scale == "returns" else max(float(advantages.std()), self.peak_spread)
            scaled = (advantages - advantages.mean()) / scale
        parts = self.gradient_parts(index, weights, scaled) if self.measure_each_minibatch else {}
        step = self.minibatch_step(index, weights, scaled)
        if step is None:  # skipped: --nonfinite skip found a number that is not finite
            return None
        kl = float(step["approx_kl"])
        self.update_kls.append(kl)
        if self.measure_each_minibatch and self.cue_env:
            self.update_action_gaps.append(cue_signal(self.policy, self.cue_env).action_gap)
        # relative to the parameter's size, floored so that a bias that starts at 0 is not infinitely "moved"
        moved = {n: float((p.detach() - before[n]).norm() / max(before[n].norm(), 0.01 * p.numel() ** 0.5))
                 for n, p in self.policy.named_parameters()}
        top = max(moved, key=moved.get)
        param = dict(self.policy.named_parameters())[top]
        state = self.optimizer.state[param]
        group_of = {p: g for g in self.optimizer.param_groups for p in g["params"]}  # tensors hash by identity
        group = group_of[param]
        t = float(state["step"])
        v_hat = state["exp_avg_sq"] / (1 - group["betas"][1] ** t)
        m_hat = state["exp_avg"] / (1 - group["betas"][0] ** t)
        adam_step = m_hat.abs() / (v_hat.sqrt() + group["eps"])  # the step in units of the learning rate
        rms = {n: float(update_rms(p.grad, self.optimizer.state[p]["exp_avg_sq"], self.optimizer.state[p]["step"],
                                   group_of[p]["betas"][1], group_of[p]["eps"]))
               for n, p in self.policy.named_parameters() if p.grad is not None}
        spiked = max(rms, key=rms.get)
        ratio = step["ratio"]
        returns, values = self.returns[index], self.buffer.data["values"][index]
        cells = [c for _, c in self.policy.get_memory().values()]
        self.rows.append({
            "update": self.update + 1, "minibatch": len(self.update_kls), "approx_kl": kl,
            "clipfrac": float(step["clipfrac"]), "grad_norm": float(step["grad_norm"]),
            "adv_mean": float(advantages.mean()), "adv_std": float(advantages.std()),
            "adv_absmax": float(advantages.abs().max()),
            "return_mean": float(returns.mean()), "return_std": float(returns.std()),
            "value_rmse": float((returns - values).pow(2).mean().sqrt()),
            "ratio_min": float(ratio.min()), "ratio_max": float(ratio.max()),
            "ratio_p99": float(ratio.flatten().quantile(0.99)), "entropy": float(step["entropy"]),
            "top_param": top, "top_moved": moved[top], "top_sqrt_v_median": float(v_hat.sqrt().median()),
            "top_adam_step_median": float(adam_step.median()), "top_adam_step_max": float(adam_step.max()),
            "moved_total": sum(moved.values()), "update_rms_max": rms[spiked], "update_rms_param": spiked,
            "cell_abs_mean": float(torch.cat([c.abs().flatten() for c in cells]).mean()) if cells else 0.0, **parts})
        return step

    def gradient_parts(self, index, weights, advantages) -> dict[str, float]:
        """Where this minibatch's gradient comes from, before its step: the norm of the gradient each loss term alone
        (the surrogate, the weighted value loss, the weighted entropy bonus) gives each part of the policy."""
        out = self.minibatch_loss(index, weights, advantages)
        terms = {"policy": out.pg_loss, "value": self.cfg.vf_coef * out.v_loss, "entropy": -self.cfg.ent_coef * out.entropy}
        names, params = zip(*self.policy.named_parameters())
        row = {}
        for term, value in terms.items():
            grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
            for part in dict.fromkeys(n.split(".")[0] for n in names):
                squares = [g.square().sum() for n, g in zip(names, grads) if g is not None and n.split(".")[0] == part]
                row[f"grad_{part}_{term}"] = float(sum(squares)) ** 0.5 if squares else 0.0
        return row

    def one_update(self) -> dict:
        """One update as Trainer.train runs it (rollout, health, learn, episode statistics), without its logs and
        checkpoint writes; its numbers."""
        self.rollout()
        self.health()
        metrics = self.learn()
        stats = self.env.episode_stats()
        summary = update_summary(self.rows[self.update_rows:])
        self.peak_spread = max(self.peak_spread, summary.get("adv_std", 0.0))
        cue = self.cue()
        return {"update": self.update, "return": stats.get("return", float("nan")), "approx_kl": metrics["approx_kl"],
                "kl_max": max(self.update_kls, default=0.0), "minibatches": len(self.update_kls),
                "explained_variance": metrics["explained_variance"], "entropy": metrics["entropy"],
                **summary, **cue}

    def weights(self) -> dict[str, torch.Tensor]:
        """A copy of the policy's parameters, by name."""
        return {n: p.detach().clone() for n, p in self.policy.named_parameters()}

    def cue(self, policy=None) -> dict:
        """The cue as `policy` (this run's, unless given) carries it: its gap in the memory and in the actions."""
        if not self.cue_env:
            return {}
        signal = cue_signal(self.policy if policy is None else policy, self.cue_env)
        return {"cue_memory_gap": signal.memory_gap, "cue_action_gap": signal.action_gap}

    def cue_by_part(self, before: dict[str, torch.Tensor]) -> list[dict]:
        """Which of the policy's parts (encoder, memory, actor, critic) carry the change the last update made to the
        cue: the cue with `before`'s weights and that part's alone updated, and with every part but it updated."""
        after = self.weights()
        rows = []
        for part in dict.fromkeys(n.split(".")[0] for n in after):
            for alone in (True, False):
                mixed = copy.deepcopy(self.policy)
                with torch.no_grad():
                    for n, p in mixed.named_parameters():
                        p.copy_(after[n] if (n == part or n.startswith(part + ".")) == alone else before[n])
                rows.append({"updated": part if alone else f"all but {part}", **self.cue(mixed)})
        return rows


def update_summary(rows: list[dict]) -> dict:
    """One update's minibatches in a few numbers: the advantages' mean spread before normalisation, the largest
    gradient norm, and the ratio's extremes."""
    if not rows:
        return {}
    return {"adv_std": sum(float(r["adv_std"]) for r in rows) / len(rows),
            "grad_norm_max": max(float(r["grad_norm"]) for r in rows),
            "update_rms_max": max(float(r["update_rms_max"]) for r in rows),
            "ratio_min": min(float(r["ratio_min"]) for r in rows), "ratio_max": max(float(r["ratio_max"]) for r in rows)}


# each variant with a number: its prefix, the number's test and the rule it must meet
NUMBERED = {"target_kl": (lambda v: v > 0, "a positive approx_kl"), "vf_clip": (lambda v: v > 0, "a positive clip"),
            "beta1": (lambda v: 0 <= v < 1, "a beta in [0, 1)"), "beta2": (lambda v: 0 <= v < 1, "a beta in [0, 1)"),
            "eps": (lambda v: v > 0, "a positive epsilon"), "lr": (lambda v: v > 0, "a positive learning rate"),
            "reshuffle": (lambda v: v >= 0 and v == int(v), "a seed: a whole number of 0 or more"),
            "ent": (lambda v: v >= 0, "an entropy weight of 0 or more"),
            "kl": (lambda v: v >= 0, "a KL weight of 0 or more"),
            "update_clip": (lambda v: v > 0, "a positive RMS of g^2 / v")}
PLAIN = ("base", "no_norm_adv", "scale_returns", "scale_peak")


def parse_variant(name: str) -> tuple[str, float]:
    """(kind, number) of one variant's name; SystemExit naming the fix for an unknown one or a bad number."""
    if name in PLAIN:
        return name, 0.0
    prefix = next((p for p in NUMBERED if name.startswith(p)), None)
    if prefix is None:
        raise SystemExit(f"error: unknown variant {name!r}: use one of {list(PLAIN)}, or one of {list(NUMBERED)} "
                         "followed by its number (e.g. eps1e-5)")
    text = name[len(prefix):].lstrip("_")
    try:
        number = float(text)
    except ValueError:
        number = float("nan")
    ok, rule = NUMBERED[prefix]
    if not ok(number):  # NaN fails every test
        raise SystemExit(f"error: variant {name!r}: {prefix} takes {rule}, not {text!r}")
    return prefix, number


def apply_variant(trainer: ProbedTrainer, name: str, cfg: TrainConfig) -> None:
    """Set `name`'s changes (several joined by +) on a trainer restored to the snapshot: its optimizer is the run's
    own again, and its cfg becomes the run's `cfg` here before the changes."""
    trainer.cfg, trainer.target_kl, trainer.adv_scale = cfg, 0.0, ""
    trainer.optimizer.max_rms = cfg.adam_update_clip
    for part in name.split("+"):
        apply_change(trainer, part)


def apply_change(trainer: ProbedTrainer, name: str) -> None:
    kind, number = parse_variant(name)
    cfg = trainer.cfg
    groups = trainer.optimizer.param_groups
    if kind == "eps":
        for g in groups:
            g["eps"] = number
    elif kind == "beta1":
        for g in groups:
            g["betas"] = (number, g["betas"][1])
    elif kind == "beta2":
        for g in groups:
            g["betas"] = (g["betas"][0], number)
    elif kind == "ent":
        trainer.cfg = cfg.replace(ent_coef=number)
    elif kind == "kl":
        trainer.cfg = cfg.replace(kl_coef=number)
    elif kind == "lr":
        trainer.cfg = cfg.replace(learning_rate=number)
    elif kind == "no_norm_adv":
        trainer.cfg = cfg.replace(norm_adv=False)
    elif kind == "vf_clip":
        trainer.cfg = cfg.replace(vf_clip_coef=number)
    elif kind == "target_kl":
        trainer.target_kl = number
    elif kind == "reshuffle":
        trainer.sampler.manual_seed(int(number))
    elif kind == "update_clip":
        trainer.cfg = cfg.replace(adam_update_clip=number)
        trainer.optimizer.max_rms = number
    elif kind in ("scale_returns", "scale_peak"):
        trainer.cfg, trainer.adv_scale = cfg.replace(norm_adv=False), kind.removeprefix("scale_")


def main(args: Args) -> None:
    if args.preset not in PRESETS:
        raise SystemExit(f"error: --preset {args.preset!r}: choose one of {sorted(PRESETS)}")
    if args.at_update < 0 or args.follow < 0:
        raise SystemExit("error: --at-update and --follow take a number of updates, 0 or more")
    for part in (p for variant in args.variants for p in variant.split("+")):
        parse_variant(part)  # every name checked before the long replay
    argv = ["--policy", args.policy, "--env", args.env, "--seed", str(args.seed), "--total-steps",
            str(args.total_steps), "--torch-threads", "1", *shlex.split(args.train_args)]
    cfg, _ = parse_config(args.preset, argv)
    if cfg.cuda_graphs:
        raise SystemExit("error: the probe measures each minibatch's step from outside, which a recorded update "
                         "would not run: leave --cuda-graphs out")
    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory() as logs:
        try:
            trainer = ProbedTrainer(cfg.replace(log_dir=logs, checkpoint_interval=10 ** 9))
        except ValueError as e:
            raise SystemExit(f"error: {e}") from None
        if args.at_update > trainer.num_updates:
            raise SystemExit(f"error: --at-update {args.at_update}: the run has {trainer.num_updates} updates")
        results = probe(trainer, cfg, args, run=[args.preset, args.at_update, *argv])
    if results:
        write_csv(os.path.join(args.out, "variants.csv"), results)


def probe(trainer: ProbedTrainer, cfg: TrainConfig, args: Args, run: list) -> list[dict]:
    """Each variant's re-run of the breaking update from the state before it (replayed, or --reuse-snapshot's)."""
    saved, parts = os.path.join(args.out, "snapshot.pt"), os.path.join(args.out, "parts.csv")
    if os.path.exists(parts):
        os.remove(parts)  # an earlier probe's: this one writes its own, with base among its variants
    if args.reuse_snapshot:
        if not os.path.exists(saved):
            raise SystemExit(f"error: --reuse-snapshot: there is no {saved}; run the probe once without it")
        loaded = torch.load(saved, weights_only=False)
        if loaded["run"] != run:
            raise SystemExit(f"error: --reuse-snapshot: {saved} is the state of another run ({loaded['run']}); "
                             "give that run's options, or another --out")
        snapshot, trainer.rows = loaded["state"], loaded["rows"]
        if trainer.rows and "update_rms_max" not in trainer.rows[0]:
            raise SystemExit(f"error: --reuse-snapshot: {saved} was saved by an older probe, without the columns this "
                             "one logs; run the probe once without --reuse-snapshot")
    else:
        snapshot = replay(trainer, args)
        if snapshot is None:
            print("no breaking update found: nothing to re-run")
            return []
        trainer.rows = [r for r in trainer.rows if r["update"] <= snapshot["update"]]  # what came before it
        torch.save({"run": run, "state": snapshot, "rows": trainer.rows}, saved)
    if snapshot["update"] + 1 + args.follow > trainer.num_updates:
        raise SystemExit(f"error: --follow {args.follow}: the run has {trainer.num_updates} updates, and the breaking "
                         f"one is update {snapshot['update'] + 1}; follow fewer")
    before = list(trainer.rows)
    peak = max([update_summary([r for r in before if r["update"] == u])["adv_std"] for u in {r["update"] for r in before}],
               default=0.0)
    results, steps = [], []  # per variant: the re-run, and its breaking update's minibatches
    for variant in args.variants:
        trainer.load_state_dict(copy.deepcopy(snapshot))  # the env's episode counts too: nothing of the last variant
        trainer.rows, trainer.peak_spread = list(before), peak
        apply_variant(trainer, variant, cfg)
        weights = trainer.weights()
        trainer.measure_each_minibatch = True
        rows = [trainer.one_update()]
        gaps = trainer.update_action_gaps
        steps += [{"variant": variant, **r} for r in trainer.rows[len(before):]]
        if variant == "base" and trainer.cue_env:
            write_csv(parts, trainer.cue_by_part(weights))
        trainer.measure_each_minibatch = False
        rows += [trainer.one_update() for _ in range(args.follow)]
        results.append({"variant": variant, "approx_kl": rows[0]["approx_kl"], "kl_max": rows[0]["kl_max"],
                        "minibatches": rows[0]["minibatches"],
                        **{k: rows[0][k] for k in ("cue_memory_gap", "cue_action_gap") if k in rows[0]},
                        **({"cue_action_gap_min": min(gaps)} if gaps else {}),
                        **{f"return_{i}": r["return"] for i, r in enumerate(rows[1:], 1)}})
        print(variant, " ".join(f"{k} {v:.3g}" for k, v in results[-1].items() if k != "variant"), flush=True)
    write_csv(os.path.join(args.out, "variant_minibatches.csv"), steps)
    return results


def replay(trainer: ProbedTrainer, args: Args) -> dict | None:
    """Run the run update by update to the breaking one (updates.csv, minibatches.csv); the state before it."""
    history, best, snapshot = [], 0.0, None
    while trainer.update < trainer.num_updates:
        state = copy.deepcopy(trainer.state_dict())
        row = trainer.one_update()
        history.append(row)
        print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
        broke = (row["update"] == args.at_update if args.at_update
                 else best >= args.solved and row["approx_kl"] > args.kl)
        best = max(best, row["return"]) if row["return"] == row["return"] else best
        if broke:
            snapshot = state
            break
    write_csv(os.path.join(args.out, "updates.csv"), history)
    write_csv(os.path.join(args.out, "minibatches.csv"), trainer.rows)
    return snapshot


def write_csv(path: str, rows: list[dict]) -> None:
    if rows:
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__))
