"""Training configuration: the field docstrings are `scripts/train.py --help`. The defaults are what a run gets: the
settings measured best on a 2-core CPU (see TUNED below). `PRESETS` varies them: cpu (the defaults), gpu (one GPU's
batch), metta (Metta's hyperparameters and semantics, reference section 5: what the collapse study runs)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from envs.config import unknown_options
from policies.memory import LSTM_INITS
from trainer.collapse.faults import parse_faults

def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (Linux: /proc/cpuinfo flags; elsewhere assumed yes)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), None)
    except OSError:
        return True
    return flags is None or bool({"avx512_bf16", "amx_bf16"} & set(flags))


# each option's own range: (option, test, the rule the error states); NaN fails every test
POSITIVE, AT_LEAST_0, FRACTION = (lambda v: v > 0), (lambda v: v >= 0), (lambda v: 0 <= v <= 1)
RULES = (
    ("num_envs", lambda v: v >= 1, "use at least 1 map"),
    ("total_steps", lambda v: v >= 1, "use a positive number of agent steps"),
    ("bptt", lambda v: v >= 2, "use at least 2 steps per segment"),
    ("minibatch_size", lambda v: v >= 1, "use a positive number of agent steps (bptt x segments)"),
    ("minibatches", AT_LEAST_0, "use 0 (minibatch_size decides) or a number of minibatches"),
    ("update_epochs", lambda v: v >= 1, "use at least 1 pass over each rollout"),
    ("learning_rate", POSITIVE, "use a positive learning rate"),
    ("encoder_lr_scale", POSITIVE, "use a positive multiple of the learning rate (1: the same rate)"),
    ("adam_eps", POSITIVE, "use a positive epsilon"),
    ("adam_update_clip", AT_LEAST_0, "use 0 (off) or a positive RMS of g^2 / v past which a step shrinks (1: "
     "StableAdamW's)"),
    ("gamma", FRACTION, "use a discount in [0, 1]"),
    ("gae_lambda", FRACTION, "use a lambda in [0, 1]"),
    ("rho_clip", POSITIVE, "use a positive V-trace clip"),
    ("c_clip", POSITIVE, "use a positive V-trace clip"),
    ("clip_coef", POSITIVE, "use a positive ratio clip (PPO's is 0.1-0.3)"),
    ("vf_clip_coef", POSITIVE, "use a positive value clip"),
    ("vf_coef", AT_LEAST_0, "use a value-loss weight of 0 or more"),
    ("ent_coef", AT_LEAST_0, "use an entropy weight of 0 or more (a negative one rewards certainty)"),
    ("kl_coef", AT_LEAST_0, "use a KL weight of 0 (off) or more"),
    ("max_grad_norm", POSITIVE, "use a positive gradient-norm clip"),
    ("prio_alpha", AT_LEAST_0, "use 0 (uniform) or more"),
    ("prio_beta0", FRACTION, "use a value in [0, 1]"),
    ("clip_range", AT_LEAST_0, "use 0 (off) or more"),
    ("encoder_leak", lambda v: 0 <= v < 1, "use a negative slope in [0, 1): 0 keeps plain ReLUs, 0.01 is the usual leak"),
    ("encoder_gain", POSITIVE, "use a positive gain: 1 keeps Metta's initial weights, 2 ** 0.5 is He's for ReLUs"),
    ("lstm_forget_bias", math.isfinite, "use a finite bias: the cell starts keeping sigmoid(bias) of itself per step"),
    ("inventory_norm", AT_LEAST_0, "use 0 (the env's divisor) or a positive divisor"),
    ("seed", AT_LEAST_0, "use a seed of 0 or more"),
    ("torch_threads", AT_LEAST_0, "use 0 (torch's default) or a number of threads"),
    ("checkpoint_interval", lambda v: v >= 1, "use at least 1 update between checkpoints"),
)
SAMPLING = ("prioritized", "shuffled")
# what a resumed run may change: its length, where and when it saves, how it runs; nothing it computes
RESUMABLE = ("total_steps", "checkpoint_interval", "log_dir", "run_name", "torch_threads", "compile", "cuda_graphs",
             "token_conv", "nonfinite")
MEMORY = ("reset", "carry")
NONFINITE = ("stop", "skip")
TRUNCATION_BOOTSTRAP = ("previous", "final")
CHOICES = {"sampling": SAMPLING, "memory": MEMORY, "nonfinite": NONFINITE, "truncation_bootstrap": TRUNCATION_BOOTSTRAP,
           "lstm_init": ("", *LSTM_INITS)}


@dataclass
class TrainConfig:
    policy: str = "fast"
    """Policy: fast, latent_attn_tiny, latent_attn_small, latent_attn_med or example."""
    env: str = "arena"
    """Task: arena, nav or memory (our gridworld), or mettagrid.arena / mettagrid.nav (the real MettaGrid package,
    pip install -e ".[mettagrid]")."""
    num_envs: int = 64
    """Maps stepped together (agents = maps x agents per map)."""
    env_overrides: dict[str, int] = field(default_factory=dict)
    """Integer env config fields to change (GridConfig, or MettaGridConfig for mettagrid.*), e.g.
    --env-overrides max_steps 100 walls 0."""
    total_steps: int = 2_000_000
    """Agent steps to train for."""
    bptt: int = 64
    """Steps per segment: the rollout length and the training unroll."""
    minibatch_size: int = 1024
    """Agent steps per minibatch; a multiple of bptt that divides the batch (agents x bptt)."""
    minibatches: int = 0
    """Minibatches per epoch, each the batch / minibatches (whole segments), so that the optimizer steps per update
    stay the same whatever num_envs is; 0: minibatch_size sets the size instead."""
    memory: str = "carry"
    """Recurrent state across rollouts: reset (Metta's: every rollout, and every training segment, starts from zero
    state) or carry (each agent's state continues from one rollout into the next, still zeroed at episode starts;
    training starts every segment from the state acting started it from)."""
    horizon_bootstrap: bool = True
    """Value the observation after the rollout's last step (with the state the rollout ended in), so the last column
    of every segment gets a real advantage and return; off: its advantage is 0 (Metta's)."""
    truncation_bootstrap: str = "previous"
    """What a time-limit truncation bootstraps from: previous (V of the last state before the limit, Metta's) or
    final (V of the final observation the limit cut, with the memory before its reset: one more forward per
    acting step)."""
    update_epochs: int = 1
    """Passes over each rollout."""
    learning_rate: float = 1e-3
    """Adam learning rate."""
    anneal_lr: bool = False
    """Decay the learning rate linearly to 0 over training."""
    lr_follows_advantages: bool = False
    """Multiply the learning rate by the spread (standard deviation) of this update's advantages divided by the
    largest spread an update has had: once the critic explains the return, what is left of the advantages is noise,
    and a solved task takes small steps on it; a task whose spread holds or grows with its return keeps its rate."""
    encoder_lr_scale: float = 1.0
    """The encoder's learning rate as a multiple of the rest's: Adam's step is about the rate whatever the gradient,
    and a step that pushes an encoder unit below zero for every input kills it; 1: one rate (Metta's)."""
    adam_eps: float = 1e-12
    """Adam epsilon."""
    adam_update_clip: float = 0.0
    """Divide each tensor's Adam step by max(1, RMS(g^2 / v) / this) (trainer/update_clip.py; 1: StableAdamW's update
    clipping): a gradient far above its history moves its coordinates by no more than a steady one, where Adam's
    own step can reach 3 learning rates; 0: off."""
    gamma: float = 0.961
    """Discount."""
    gae_lambda: float = 0.804
    """GAE lambda."""
    rho_clip: float = 1.0
    """V-trace clip of the importance ratio in the advantage's delta."""
    c_clip: float = 1.0
    """V-trace clip of the importance ratio in the advantage's trace."""
    clip_coef: float = 0.163
    """PPO ratio clip."""
    vf_clip_coef: float = 9.71
    """Value clip around the rollout's values."""
    vf_coef: float = 0.425
    """Value loss weight."""
    ent_coef: float = 1.61e-3
    """Entropy bonus weight."""
    kl_coef: float = 0.0
    """Weight of a penalty on the KL from the acting policy (approx_kl, per minibatch), whose gradient pulls the
    policy back wherever it moved, past the clip too, where the surrogate's is 0; 0: off (Metta's)."""
    norm_adv: bool = True
    """Normalise the advantages to mean 0 and standard deviation 1 over each minibatch (Metta's); off: the policy
    loss takes them as computed, so its scale follows the rewards'."""
    max_grad_norm: float = 0.5
    """Gradient norm clip."""
    sampling: str = "prioritized"
    """Minibatch sampling: prioritized (multinomial by advantage; uniform at prio_alpha 0) or shuffled
    (each segment once per epoch)."""
    prio_alpha: float = 0.0
    """Prioritization exponent: 0 uniform."""
    prio_beta0: float = 0.6
    """Initial importance-weight exponent: beta = beta0 + (1 - beta0) * prio_alpha * update / updates."""
    clip_range: float = 0.0
    """Policy weight clipping (clip_weights): 0 off."""
    lstm_init: str = "forget"
    """LSTM biases: metta (every bias 1, Metta's; saturates the cell), forget (forget gate 1, others 0), or
    empty for the policy's own (metta for fast and latent_attn_*, forget for example)."""
    lstm_forget_bias: float = 1.0
    """The forget gate's initial bias under lstm_init forget: the cell starts keeping sigmoid(bias) of itself per
    step, 0.73 at 1, 0.88 at 2, so what an early step wrote (a cue) reaches a later one larger."""
    inventory_norm: float = 1.0
    """Divisor of the inventory features (inv:...) in the policy's input: 0 keeps the env's (Metta's 100;
    MettaGrid 0.26's 256), under which one held item reads 0.01 and a loaded altar looks almost like an
    emptied one; 1 makes one item read 1."""
    one_hot_ids: bool = False
    """Read each id feature (type_id, orientation, last_action) as one input channel per id, instead of the env's
    one channel where a wall is 2 and a generator 4 (the env's, Metta's)."""
    encoder_leak: float = 0.0
    """Negative slope of the encoder's ReLUs (LeakyReLU): a unit below zero for every input still passes a gradient,
    so it can come back; 0: plain ReLU (Metta's)."""
    encoder_gain: float = 1.0
    """Scale of the encoder's initial weights (fast and example: orthogonal with this gain): each ReLU halves a
    random signal's power, so at 1 (Metta's) a one-token cue reaches the memory smaller at every layer; 2 ** 0.5
    keeps it (He's)."""
    faults: str = ""
    """Comma-separated faults to switch on (trainer/collapse/faults.py), e.g. memoryless_rollout,no_relu, or the
    preset prefix (what the collapsing port had). Empty: the correct trainer."""
    bf16: bool = False
    """Run the policy under bfloat16 autocast (AMX on recent Xeons, tensor cores on GPUs); log-probs, values,
    losses and the optimizer stay fp32."""
    compile: bool = False
    """torch.compile the policy's encoder and heads (the first update then takes tens of seconds longer)."""
    cuda_graphs: bool = False
    """CUDA only: record the acting step and the update's gradient step as CUDA graphs once and replay them
    (trainer/cuda_graph.py), one launch instead of one per kernel; the same computation. One process only."""
    token_conv: bool = True
    """Fast only: compute its first convolution from the real tokens instead of over the dense [features, 11, 11]
    box (policies/tokens.py TokenConv): the same weights and values within float rounding, less work on a CPU
    (docs/benchmarks.md, "The token convolution")."""
    nonfinite: str = "stop"
    """A loss, gradient norm or weight that is not a finite number: stop (end the run with an error naming the
    update, the quantity and the last good checkpoint, which is never overwritten) or skip (skip that minibatch's
    step and count it in losses/skipped_minibatches; one read from the device per minibatch)."""
    seed: int = 0
    """Seeds the env, the policy's initialisation and sampling, and minibatch sampling."""
    device: str = "auto"
    """cuda, cpu, or auto (cuda when available)."""
    torch_threads: int = 0
    """CPU threads for torch (0: torch's default)."""
    log_dir: str = "runs"
    """TensorBoard logs and checkpoints go to log_dir/run_name."""
    run_name: str = ""
    """Name of this run (default: env_policy_seed)."""
    checkpoint_interval: int = 50
    """Save a checkpoint every this many updates (also at the end and on Ctrl-C)."""
    resume: str = ""
    """A checkpoint to continue from, with its saved configuration (the other options are ignored)."""
    init_from: str = ""
    """A checkpoint whose policy weights a new run starts from (a curriculum's next stage: the same policy and input
    options on another task or env variant); the optimizer, the envs and the step count start fresh. A resumed run
    keeps its own weights."""

    def check_device(self, device: torch.device) -> None:
        """The switches this device cannot run as asked. --bf16 on a CPU without native bfloat16 (neither
        AVX512-BF16 nor AMX) is emulated in software and runs several times slower than fp32: refuse it rather
        than slow a run down silently."""
        if self.cuda_graphs and device.type != "cuda":
            raise ValueError(f"cuda_graphs=True needs a CUDA device, and this run's is {device.type}: leave "
                             "--cuda-graphs out, or pass --device cuda on a machine with a GPU")
        if self.bf16 and device.type == "cpu" and not cpu_has_native_bf16():
            raise ValueError("bf16=True: this CPU has no native bfloat16 (neither AVX512-BF16 nor AMX), so bf16 "
                             "would be emulated, several times slower than fp32: "
                             "leave --bf16 out")

    @property
    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            device = torch.device(self.device)
            torch.empty(0, device=device)
        except (RuntimeError, AssertionError) as e:
            raise ValueError(f"device={self.device!r} cannot be used here ({str(e)[:120]}): use cpu, cuda or auto") from None
        return device

    @property
    def fault_set(self) -> frozenset[str]:
        """The fault names switched on, presets expanded; ValueError for an unknown or inapplicable one."""
        return parse_faults(self.faults, self.policy)

    @property
    def policy_options(self) -> dict:
        """Everything make_policy needs beyond the policy's name and the env."""
        options = {"clip_range": self.clip_range}
        if self.inventory_norm:
            options["inventory_norm"] = self.inventory_norm
        if self.one_hot_ids:
            options["one_hot_ids"] = True
        if self.encoder_leak:
            options["encoder_leak"] = self.encoder_leak
        if self.encoder_gain != 1:
            options["encoder_gain"] = self.encoder_gain
        if self.lstm_init:
            options["lstm_init"] = self.lstm_init
        if self.lstm_forget_bias != 1:
            options["lstm_forget_bias"] = self.lstm_forget_bias
        if self.policy == "fast":
            options["token_conv"] = self.token_conv
        return options

    @property
    def name(self) -> str:
        return self.run_name or f"{self.env}_{self.policy}_{self.seed}"

    def check(self) -> None:
        """Every option on its own, before any work starts; ValueError naming the option and the fix."""
        for name, ok, rule in RULES:
            value = getattr(self, name)
            if not ok(value):
                raise ValueError(f"{name}={value!r}: {rule}")
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"{name}={getattr(self, name)!r}: choose one of {choices}")
        faults = self.fault_set  # raises for an unknown fault
        if self.token_conv and self.policy == "fast" and "obs_zero_255_inplace" in faults:
            raise ValueError("token_conv=True with the fault obs_zero_255_inplace: the fault's zeroed padding tokens "
                             "overwrite a real token in the box, the token convolution adds their zeros instead, so "
                             "the fault would not do what it did: add --no-token-conv")
        if self.encoder_leak and "no_relu" in faults:
            raise ValueError("encoder_leak with the fault no_relu: the fault removes the encoder's ReLUs the leak would "
                             "replace: leave one of them out")
        if self.cuda_graphs and self.nonfinite == "skip":
            raise ValueError("cuda_graphs=True with nonfinite='skip': a skip is decided on the host after each "
                             "minibatch's backward, inside what the graph records: use --nonfinite stop (the default), "
                             "or leave --cuda-graphs out")
        if self.cuda_graphs and faults:
            raise ValueError(f"cuda_graphs=True with the faults {sorted(faults)}: the graph replays the correct acting "
                             "step, and a fault that changes it in Python (or writes into the observation) would not "
                             "run in the replays: leave --cuda-graphs out of the collapse study")

    def validate(self, num_agents: int) -> None:
        """Every option, and what depends on the env's agent count; ValueError naming the fix."""
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(msg)

        self.check()
        batch = num_agents * self.bptt
        if self.minibatches:
            need(self.minibatches <= num_agents and num_agents % self.minibatches == 0,
                 f"minibatches={self.minibatches} must divide the batch's {num_agents} segments ({num_agents} agents): "
                 f"choose num_envs so that it does, or a minibatches that divides {num_agents}")
        else:
            need(self.minibatch_size % self.bptt == 0, f"minibatch_size={self.minibatch_size} is not a multiple of "
                 f"bptt={self.bptt}: minibatches hold whole segments")
            segments = self.minibatch_size // self.bptt
            need(0 < segments <= num_agents and num_agents % segments == 0,
                 f"the batch is {num_agents} segments ({num_agents} agents x bptt {self.bptt} = {batch} steps); "
                 f"minibatches of {segments} segments ({self.minibatch_size} steps) must divide it: choose a "
                 f"minibatch_size of bptt x a divisor of {num_agents}")
        need(self.total_steps >= batch, f"total_steps={self.total_steps} is less than one batch ({batch}): raise it")

    def segments_per_minibatch(self, num_agents: int) -> int:
        """Whole segments in each minibatch: the batch's over minibatches, or minibatch_size's."""
        return num_agents // self.minibatches if self.minibatches else self.minibatch_size // self.bptt

    @classmethod
    def from_dict(cls, saved: dict) -> TrainConfig:
        """The configuration a checkpoint saved; ValueError if it has options this version does not know."""
        unknown = unknown_options(cls, saved)
        if unknown:
            raise ValueError(f"the checkpoint's configuration has options this version of minippo does not know "
                             f"({unknown}): it was written by another version; retrain or use that version")
        return cls(**{**METTA, **saved})  # an option it predates ran at its default then: Metta's

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def resumed(self, saved: dict, given: Iterable[str] = ()) -> TrainConfig:
        """The checkpoint's configuration `saved`, with the options named in `given` (those set on purpose beside
        resume) taken from this one where a resumed run can change them; ValueError naming the others."""
        refused = sorted(set(given) - set(RESUMABLE) - {"resume"})
        if refused:
            raise ValueError(f"--resume continues the saved run as it was configured; {refused} cannot change on "
                             f"resume (only {list(RESUMABLE)} can): leave them out, or start a new run")
        return TrainConfig.from_dict(saved).replace(resume=self.resume, **{k: getattr(self, k) for k in given
                                                                            if k in RESUMABLE})


# Why the defaults differ from Metta's, each kept by a measurement (docs/training.md, "Defaults and presets", links
# each to the docs/learning.md section that measured it): memory carried across rollouts with a value at the
# horizon (the memory task's seeds learned only with both); the loss settings scripts/tune.py found on nav, with
# Metta's per-minibatch advantage normalisation kept (without it the arena's small rewards left the entropy bonus in
# charge); the inventory divided by 1, so that one held item reads 1, not 0.01; the learning rate 1e-3, not the
# search's 2.66e-3, at which Adam's first steps silenced Fast's encoder; the sizes a 2-core CPU trains at.
# Metta's own, where they differ:
METTA = dict(num_envs=32, minibatch_size=4096, memory="reset", horizon_bootstrap=False, learning_rate=4.57e-4,
             gamma=0.977, gae_lambda=0.916, clip_coef=0.1, vf_clip_coef=0.1, vf_coef=0.44, ent_coef=0.0021,
             lstm_init="", inventory_norm=0.0, token_conv=False)
PRESETS = {
    "cpu": TrainConfig(),
    # One GPU: near Metta's batch (1024 arena maps = 6144 agents, 393,216 steps; Metta's is 524,288), and as many
    # minibatches per update as the cpu preset takes on nav, at any num_envs: Adam's step does not grow with the
    # minibatch, so a fixed minibatch size would cut a smaller batch's optimizer steps (256 nav maps: to one). The
    # box, not the token convolution, which saves a CPU work and a GPU nothing.
    "gpu": TrainConfig(num_envs=1024, minibatches=16, total_steps=500_000_000, token_conv=False),
    # Metta's hyperparameters and semantics at the cpu preset's size, with the learning rate scaled to it (Metta's
    # 4.57e-4 with 4 minibatches per 16k batch learned nothing in 400k steps): what the collapse study runs.
    "metta": TrainConfig(**{**METTA, "num_envs": 64, "minibatch_size": 1024, "learning_rate": 3e-3}),
}
