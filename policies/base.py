"""The forward contract every policy follows, written once.

    obs tokens --encoder--> [N, 128] --LSTMMemory--> h --critic--> value
                                                      \\--actor---> logits over all (type, arg) pairs

Acting (rollout), TensorDict `[B]` with `env_obs`, `dones`, `truncateds`, `training_env_id_start` (the slice's
    first agent index: a plain int, or a `[B]` tensor of it as in Metta)
    -> writes `actions [B, 2]`, `act_log_prob`, `values`, `full_log_probs [B, pairs]`.
Training, TensorDict `[B, T]` with `env_obs`, `actions`, `dones`, `truncateds`
    -> writes `act_log_prob`, `entropy`, `values`, `full_log_probs`, all `[B, T, ...]`.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict
from torch import nn

from envs.spec import EnvSpec
from policies.actions import ActionTable, BilinearActionHead
from policies.memory import LSTMMemory
from policies.tokens import OneHotIds, check_tokens


def init_layer(layer: nn.Module, gain: float = 1.0) -> nn.Module:
    """Orthogonal weights with `gain`, zero bias (Metta's init for every Linear and Conv)."""
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


class RecurrentPolicy(nn.Module):
    def __init__(self, spec: EnvSpec, encoder: nn.Module, memory: LSTMMemory, critic: nn.Module, actor: nn.Module,
                 clip_range: float = 0.0):
        super().__init__()
        self.spec = spec
        self.encoder, self.memory, self.critic, self.actor = encoder, memory, critic, actor
        self.read_ids = OneHotIds(spec) if spec.one_hot_ids else nn.Identity()
        self.actions = ActionTable(spec)
        self.clip_range = clip_range
        record_weight_bounds(self)

    def forward(self, td: TensorDict) -> TensorDict:
        obs = td["env_obs"]
        check_tokens(obs, self.spec)
        starts = td["dones"].bool() | td["truncateds"].bool()  # this observation begins a new episode
        key = slice_key(td)
        if td.batch_dims == 1:  # acting: one step per agent
            h = self.memory.step(self.encode(obs), starts, key)
            log_probs, values = self._heads(h)
            index = torch.multinomial(log_probs.exp(), 1).squeeze(-1)
            td["actions"] = self.actions.to_pairs(index)
        elif td.batch_dims == 2:  # training: [B, T] segments
            B, T = td.batch_size
            x = self.encode(obs.flatten(0, 1)).view(B, T, -1)
            h = self.memory.unroll(x, starts, key)
            log_probs, values = self._heads(h)
            index = self.actions.to_index(td["actions"])
            td["entropy"] = -(log_probs.exp() * log_probs).sum(-1)
        else:
            raise ValueError(f"policy input must be a TensorDict of batch [B] (acting) or [B, T] (training); "
                             f"got batch {list(td.batch_size)}")
        td["act_log_prob"] = log_probs.gather(-1, index[..., None]).squeeze(-1)
        td["values"] = values
        td["full_log_probs"] = log_probs
        return td

    def value(self, td: TensorDict) -> torch.Tensor:
        """V of an acting batch `[B]` from the stored memory, which is left as it was: the value of the observation
        after a rollout's last step, or of the final observation a time limit cut (before its reset)."""
        obs = td["env_obs"]
        check_tokens(obs, self.spec)
        saved = self.memory.get_memory()
        h = self.memory.step(self.encode(obs), td["dones"].bool() | td["truncateds"].bool(), slice_key(td))
        self.memory.set_memory(saved)
        return self.critic(h).squeeze(-1).float()

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        """Tokens -> the encoder's features, id features first spread to a channel per id where the spec asks."""
        return self.encoder(self.read_ids(obs))

    def _heads(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # fp32 softmax and values even under bf16 autocast: bf16 log-probs would make the PPO ratio noisy
        return torch.log_softmax(self.actor(h).float(), -1), self.critic(h).squeeze(-1).float()

    def compile_parts(self) -> None:
        """torch.compile the encoder and the heads in place (parameter names unchanged). The memory stays
        eager: its per-slice state is Python-side and its unroll is already one LSTM call per stretch."""
        for part in (self.encoder, self.critic, self.actor):
            part.compile()

    def clip_weights(self) -> None:
        """Clamp each Linear/Conv weight to ±clip_range × its largest initial |w|; nothing when clip_range is 0."""
        if self.clip_range <= 0:
            return
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, (nn.Linear, nn.Conv2d)):
                    bound = self.clip_range * m.initial_weight_bound
                    m.weight.clamp_(-bound, bound)

    def reset_memory(self) -> None:
        self.memory.reset_memory()

    def has_memory(self) -> bool:
        return True

    def get_memory(self) -> dict:
        return self.memory.get_memory()

    def set_memory(self, state: dict) -> None:
        self.memory.set_memory(state)


def replace_encoder_relus(policy: RecurrentPolicy, make: type[nn.Module], *args) -> None:
    """Swap every nn.ReLU in the policy's encoder for `make(*args)` (the same layers, another activation)."""
    relus = [(parent, name) for parent in policy.encoder.modules()
             for name, child in parent.named_children() if isinstance(child, nn.ReLU)]
    if not relus:
        raise ValueError(f"{type(policy).__name__}'s encoder has no ReLU to replace")
    for parent, name in relus:
        setattr(parent, name, make(*args))


def scale_encoder_weights(policy: RecurrentPolicy, gain: float) -> None:
    """Multiply the initial weights of an encoder of orthogonal Linear/Conv layers (init_layer's) by `gain`: an
    orthogonal init with gain g is g times the gain-1 draw, so the draws stay the policy's own and only their scale
    changes. An encoder with other parameters (attention, LayerNorm, whose norms would undo a scale) is refused."""
    layers = [m for m in policy.encoder.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    scaled = {id(p) for m in layers for p in m.parameters()}
    if not layers or any(id(p) not in scaled for p in policy.encoder.parameters()):
        raise ValueError(f"encoder_gain scales an encoder made of Linear and Conv2d layers (fast's, example's); "
                         f"{type(policy).__name__}'s has other parameters (attention, LayerNorm), whose init it would "
                         "not scale: leave encoder_gain at 1")
    with torch.no_grad():
        for m in layers:
            m.weight.mul_(gain)
    record_weight_bounds(policy.encoder)  # clip_weights bounds each weight by its (now scaled) initial size


def record_weight_bounds(module: nn.Module) -> None:
    """clip_weights bounds each Linear/Conv weight by the largest |w| it was initialised with: remember it."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            m.register_buffer("initial_weight_bound", m.weight.detach().abs().max().clone())


def slice_key(td: TensorDict) -> int:
    """The env slice's first agent index (0 when the batch does not say). A plain int (`td.set_non_tensor`)
    is read as is; a tensor, as Metta passes it, costs a read back from the device."""
    if "training_env_id_start" not in td.keys():
        return 0
    key = td["training_env_id_start"]
    return int(key.flatten()[0]) if isinstance(key, torch.Tensor) else int(key)


def metta_heads(spec: EnvSpec, hidden: int = 128) -> tuple[nn.Module, nn.Module]:
    """Fast's critic (1024 tanh -> 1) and actor (512 ReLU -> bilinear over all action pairs)."""
    critic = nn.Sequential(init_layer(nn.Linear(hidden, 1024), gain=2 ** 0.5), nn.Tanh(), init_layer(nn.Linear(1024, 1)))
    head = BilinearActionHead(512, spec.num_action_pairs)  # drawn before the layer under it, as Fast always has
    actor = nn.Sequential(init_layer(nn.Linear(hidden, 512)), nn.ReLU(), head)
    return critic, actor
