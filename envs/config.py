"""Gridworld configuration, its validation, and the three tasks built on the one engine."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from envs.spec import GLOBAL_FEATURES

# Characters of an ASCII layout. An agent is one of ^ v < > (its facing) or @ (random facing).
LAYOUT_CHARS = {".": "empty", "#": "wall", "m": "mine_red", "g": "generator_red", "a": "altar", "b": "block", "c": "cue"}
AGENT_CHARS = {"^": 0, "v": 1, "<": 2, ">": 3, "@": -1}


class ConfigError(ValueError):
    """A configuration the env cannot run; the message says what to change."""


@dataclass
class GridConfig:
    num_envs: int = 64
    """Independent maps stepped together."""
    agents_per_env: int = 6
    """Agents sharing one map (ignored when `layout` places them)."""
    height: int = 25
    """Map rows including the border walls (ignored when `layout` is given)."""
    width: int = 25
    """Map columns including the border walls (ignored when `layout` is given)."""
    mines: int = 10
    """Mines (give ore_red) placed at random."""
    generators: int = 5
    """Generators (ore_red -> battery_red) placed at random."""
    altars: int = 5
    """Altars (battery_red -> heart) placed at random."""
    blocks: int = 20
    """Swappable blocks placed at random."""
    walls: int = 20
    """Interior wall cells placed at random."""
    layout: tuple[str, ...] | None = None
    """A fixed map as ASCII rows (# wall, . empty, m mine, g generator, a altar, b block, c cue,
    ^ v < > @ agent); replaces random placement."""
    max_steps: int = 1000
    """Episode length; at this step every agent of the map is truncated."""
    desync_episodes: bool = True
    """Draw each map's first episode length uniformly from 1..max_steps, so resets spread out."""
    obs_window: int = 11
    """Side of the agent-centred square window (odd, at most 15: row and col are 4-bit)."""
    obs_tokens: int = 200
    """Tokens per observation; the first 4 are global, extra object tokens are dropped and counted."""
    conversion_ticks: int = 1
    """Steps from a converter taking its input (a mine: starting) to its output appearing; then it cools down."""
    mine_cooldown: int = 50
    """Steps a mine rests after making one ore before it starts the next (MettaGrid's cooldown)."""
    mine_max_output: int = 5
    """A mine stops producing while it holds this much ore."""
    mine_initial_output: int = 0
    """Ore a mine holds at the start of an episode (its first is made at step 1 either way)."""
    generator_cooldown: int = 25
    """Steps a generator rests after turning one ore into one battery."""
    generator_max_output: int = 5
    """A generator pauses while it holds this many batteries."""
    altar_cooldown: int = 10
    """Steps an altar rests after turning one battery into one heart."""
    altar_max_output: int = 5
    """An altar pauses while it holds this many hearts."""
    altar_initial_output: int = 0
    """Hearts an altar holds at the start of an episode."""
    max_inventory: int = 100
    """Most of one item an agent or converter can hold (at most 255: a token value is a byte)."""
    initial_lasers: int = 0
    """Lasers each agent starts with (attack spends one)."""
    freeze_duration: int = 10
    """Steps an attacked agent stays frozen."""
    reward_weights: tuple[float, float, float] = (0.1, 0.8, 1.0)
    """Potential per ore_red, battery_red, heart held."""
    reward_caps: tuple[float, float, float] = (1.0, 1.0, math.inf)
    """Cap of each item's potential; reward is the change of the summed potential."""
    end_after_altar_takes: int = 0
    """Terminate the episode once agents have taken from altars this many times (0: never)."""
    cue_steps: int = 0
    """Steps the cue is shown while every agent is frozen; then the cue vanishes (memory task)."""
    cue_delay: int = 0
    """Steps every agent stays frozen after the cue vanished: how long it must remember the cue."""
    seed: int = 0
    """Seeds map generation and the random order in which agents act."""
    device: str = "cpu"
    """Torch device holding the whole env state."""

    # --- validation: every rule names the field and the fix -------------------------------------
    def validate(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(msg)

        for name in ("num_envs", "agents_per_env", "max_steps", "conversion_ticks", "mine_cooldown",
                     "generator_cooldown", "altar_cooldown", "max_inventory"):
            need(getattr(self, name) >= 1, f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("mines", "generators", "altars", "blocks", "walls", "mine_max_output", "generator_max_output",
                     "altar_max_output", "mine_initial_output", "altar_initial_output", "initial_lasers",
                     "freeze_duration", "end_after_altar_takes", "cue_steps", "cue_delay"):
            need(getattr(self, name) >= 0, f"{name} must be 0 or more, got {getattr(self, name)}")
        need(self.max_inventory <= 255, f"max_inventory={self.max_inventory}: a token value is one byte, use at most 255")
        for name in ("mine_initial_output", "altar_initial_output", "initial_lasers"):
            need(getattr(self, name) <= self.max_inventory, f"{name} must not exceed max_inventory={self.max_inventory}")
        need(self.obs_window % 2 == 1 and 3 <= self.obs_window <= 15,
             f"obs_window={self.obs_window}: use an odd size from 3 to 15 (a token packs row and col in 4 bits each)")
        need(self.obs_tokens > len(GLOBAL_FEATURES),
             f"obs_tokens={self.obs_tokens}: must exceed the {len(GLOBAL_FEATURES)} global tokens to show any object")
        need(len(self.reward_weights) == 3 and len(self.reward_caps) == 3,
             "reward_weights and reward_caps take three numbers: ore_red, battery_red, heart")
        need(all(c > 0 for c in self.reward_caps), "reward_caps must be positive (use inf for no cap)")
        need(self.cue_steps + self.cue_delay < self.max_steps,
             f"cue_steps + cue_delay = {self.cue_steps + self.cue_delay} leaves no step to act in max_steps={self.max_steps}")
        try:
            torch.device(self.device)
        except RuntimeError as e:
            raise ConfigError(f"device={self.device!r} is not a torch device: {e}") from None
        if self.layout is None:
            need(self.height >= 3 and self.width >= 3, f"height and width must be at least 3 (border walls), got {self.height}x{self.width}")
            free = (self.height - 2) * (self.width - 2)
            placed = self.agents_per_env + self.mines + self.generators + self.altars + self.blocks + self.walls
            need(placed <= free, f"{placed} agents and objects do not fit in the {free} free cells of a "
                 f"{self.height}x{self.width} map: enlarge height/width or lower the counts")
            need(self.cue_steps + self.cue_delay == 0, "cue_steps and cue_delay need a layout with a cue cell 'c'")
        else:
            self._validate_layout(need)

    def _validate_layout(self, need) -> None:
        rows = self.layout
        need(len(rows) >= 3 and len({len(r) for r in rows}) == 1 and len(rows[0]) >= 3,
             "layout must be at least 3 rows of equal length, at least 3 wide")
        known = set(LAYOUT_CHARS) | set(AGENT_CHARS)
        bad = sorted({ch for r in rows for ch in r} - known)
        need(not bad, f"layout has unknown characters {bad}; use one of {''.join(sorted(known))}")
        border = rows[0] + rows[-1] + "".join(r[0] + r[-1] for r in rows)
        need(set(border) == {"#"}, "layout must be enclosed by walls '#' on every border cell")
        text = "".join(rows)
        need(sum(text.count(c) for c in AGENT_CHARS) >= 1, "layout places no agent: add one of ^ v < > @")
        cues = text.count("c")
        need(cues <= 1, f"layout has {cues} cues; the memory task uses at most one")
        need(cues == 0 or text.count("a") == 2, "a layout with a cue needs exactly two altars: the cue names which one pays")
        need(cues == 0 or self.cue_steps >= 1, "a layout with a cue needs cue_steps >= 1, or the cue is never seen")
        need(cues == 1 or self.cue_steps + self.cue_delay == 0, "cue_steps and cue_delay need a layout with a cue cell 'c'")

    def replace(self, **changes) -> GridConfig:
        return dataclasses.replace(self, **changes)


# --- Tasks: the same engine, three configurations -------------------------------------------------
MEMORY_LAYOUT = (
    "#####",
    "##a##",
    "#c>##",
    "##a##",
    "#####",
)

TASKS: dict[str, GridConfig] = {
    # MettaGrid's arena room: one of basic_easy_shaped's four 25x25 rooms, 6 agents, full resource chain.
    "arena": GridConfig(),
    # Find and empty three altars (one heart each) in a small room; ends when all are taken.
    "nav": GridConfig(agents_per_env=1, height=9, width=9, mines=0, generators=0, altars=3, blocks=0, walls=4,
                      altar_initial_output=1, max_steps=64, end_after_altar_takes=3),
    # A cue (facing up: the upper altar pays; down: the lower) is shown while the agent is frozen, then vanishes; after the
    # delay, take from the altar it named. Any altar take ends the episode; the wrong one pays 0.
    "memory": GridConfig(agents_per_env=1, layout=MEMORY_LAYOUT, altar_initial_output=1, max_steps=24,
                         end_after_altar_takes=1, cue_steps=2, cue_delay=2, desync_episodes=False),
}


def unknown_options(config_class, names) -> list[str]:
    """The names that are not fields of the dataclass `config_class`, sorted (for errors that list them)."""
    return sorted(set(names) - {f.name for f in dataclasses.fields(config_class)})


def make_config(task: str = "arena", **overrides) -> GridConfig:
    """The named task's configuration with `overrides` applied, validated."""
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose one of {sorted(TASKS)}, or mettagrid.arena / mettagrid.nav "
                          "for the real MettaGrid")
    unknown = unknown_options(GridConfig, overrides)
    if unknown:
        raise ConfigError(f"unknown env option(s) {unknown}; see envs.config.GridConfig for the valid ones")
    cfg = TASKS[task].replace(**overrides)
    cfg.validate()
    return cfg
