"""What a token-observation env declares to the policies that read it.

Policies build their input channels, token embeddings and action heads from an `EnvSpec`, never from
constants of their own, so the same policy runs on any env that fills one in (ours, or the real
MettaGrid with its own features and actions).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

EMPTY_TOKEN = 0xFF  # a location byte of 0xFF marks a padding token: [255, 255, 255]


@dataclass(frozen=True)
class EnvSpec:
    feature_names: tuple[str, ...]
    """Observation feature ids are positions in this tuple."""
    feature_normalizations: tuple[float, ...]
    """Divisor per feature id, applied when tokens become a box."""
    action_names: tuple[str, ...]
    """Action types, in the env's order; an action is (type, arg)."""
    action_max_args: tuple[int, ...]
    """Largest valid arg per action type."""
    obs_width: int
    obs_height: int
    num_tokens: int
    global_location: int
    """Location byte of the global tokens (the window centre here; 0xFE in MettaGrid 0.26)."""
    id_features: tuple[tuple[str, int], ...] = ()
    """Features whose value names a kind rather than an amount (type_id: 2 a wall, 4 a generator), each with
    its number of ids (values 0 .. n-1; a 0 reads as nothing either way, as in the box)."""
    one_hot_ids: bool = False
    """Policies read each id feature as one channel per id (with_one_hot_ids appended them to feature_names)."""

    @property
    def num_features(self) -> int:
        return len(self.feature_names)

    @property
    def num_action_pairs(self) -> int:
        return sum(m + 1 for m in self.action_max_args)

    def feature_id(self, name: str) -> int:
        return self.feature_names.index(name)

    def action_pairs(self) -> torch.Tensor:
        """`[num_action_pairs, 2]` (type, arg) in flat index order: index = type + cum[type] + arg."""
        return torch.tensor([(t, a) for t, m in enumerate(self.action_max_args) for a in range(m + 1)])

    def action_cum(self) -> torch.Tensor:
        """cum[type] = sum of max_args of the types before it, so index = type + cum[type] + arg."""
        return torch.tensor([0, *self.action_max_args[:-1]]).cumsum(0)

    def with_inventory_norm(self, divisor: float) -> EnvSpec:
        """This spec with every inventory feature (named `inv:...`) divided by `divisor` instead of the env's own
        normalisation (Metta's 100, MettaGrid 0.26's 256, under which one item reads 0.01 or less)."""
        if not divisor > 0:
            raise ValueError(f"inventory_norm={divisor!r}: use a positive divisor")
        inventory = [name.startswith("inv:") for name in self.feature_names]
        if not any(inventory):
            raise ValueError("inventory_norm is set, but this env declares no inventory features (named inv:...): "
                             "leave it at 0")
        norms = tuple(divisor if held else norm for held, norm in zip(inventory, self.feature_normalizations))
        return dataclasses.replace(self, feature_normalizations=norms)

    def with_one_hot_ids(self) -> EnvSpec:
        """This spec with a feature `name=k` (normalisation 1) per id k of every id feature: a box then holds a
        wall and a generator on two channels, where the env's type_id puts them on one as 2 and 4 (an id of 0, such
        as orientation 0, facing up, stays nothing). policies.tokens.OneHotIds rewrites the tokens to match."""
        if self.one_hot_ids:
            return self
        if not self.id_features:
            raise ValueError("one_hot_ids is set, but this env declares no id features (EnvSpec.id_features): "
                             "leave it off")
        names = tuple(f"{name}={k}" for name, n in self.id_features for k in range(1, n))
        if self.num_features + len(names) > EMPTY_TOKEN:
            raise ValueError(f"one channel per id needs {self.num_features + len(names)} features, more than a "
                             f"token's feature byte holds ({EMPTY_TOKEN}): leave one_hot_ids off")
        return dataclasses.replace(self, feature_names=self.feature_names + names,
                                   feature_normalizations=self.feature_normalizations + (1.0,) * len(names),
                                   one_hot_ids=True)


# --- Our gridworld's features (MettaGrid, August 2025) ---------------------------------------------
INVENTORY_ITEMS = (
    "ore_red", "ore_blue", "ore_green", "battery_red", "battery_blue", "battery_green",
    "heart", "armor", "laser", "blueprint",
)
FEATURES = (
    ("type_id", 1), ("group", 10), ("hp", 30), ("frozen", 1), ("orientation", 1), ("color", 255),
    ("converting", 1), ("swappable", 1), ("episode_completion_pct", 255), ("last_action", 10),
    ("last_action_arg", 10), ("last_reward", 100), ("glyph", 255), ("resource_rewards", 255),
    ("visitation_counts", 1000),
    *((f"inv:{item}", 100) for item in INVENTORY_ITEMS),
)
FEATURE_NAMES = tuple(name for name, _ in FEATURES)
F = {name: i for i, name in enumerate(FEATURE_NAMES)}  # feature name -> id
INV0 = F["inv:ore_red"]  # inventory item i is feature INV0 + i
ITEM = {name: i for i, name in enumerate(INVENTORY_ITEMS)}
GLOBAL_FEATURES = ("episode_completion_pct", "last_action", "last_action_arg", "last_reward")

# Action types in alphabetical order, as MettaGrid registers them, with their largest arg.
ACTIONS = (("attack", 8), ("get_items", 0), ("move", 1), ("noop", 0), ("put_items", 0), ("rotate", 3), ("swap", 0))
A = {name: i for i, (name, _) in enumerate(ACTIONS)}  # action name -> type id

# Object type ids (the value of the type_id feature). 0 is never emitted: it would vanish in a box.
TYPE_IDS = {"agent": 1, "wall": 2, "mine_red": 3, "generator_red": 4, "altar": 5, "block": 6, "cue": 7}

# Orientation: 0 up, 1 down, 2 left, 3 right (also rotate's arg); (d_row, d_col) per orientation.
DIRECTIONS = ((-1, 0), (1, 0), (0, -1), (0, 1))

# Features whose value is an id, and how many ids each has (EnvSpec.id_features).
ID_FEATURES = (("type_id", len(TYPE_IDS) + 1), ("orientation", 4), ("last_action", len(ACTIONS)))
