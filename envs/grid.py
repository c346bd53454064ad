"""A multi-agent token gridworld stepped as batched tensor operations (MettaGrid's 2025 arena semantics).

The whole state of `num_envs` maps lives in a few tensors on one device; `step` has no Python loop over
maps or agents. Every thing on a map is a *row* of one feature table, `obj [envs, rows, features]`: its
type id, orientation, frozen steps, inventory, ... are columns, and its observation tokens are simply its
nonzero features in feature-id order. Grid cells hold row numbers. Rows: 0 empty, 1 wall (shared by every
wall cell), 2 block (shared), then one row per agent, per mine, generator, altar, and the cue.

Simultaneous actions (MettaGrid applies agents one by one in a random order). Here every action reads the
state at the start of the step, and a random order is drawn per map each step to settle contests:
- attacks resolve first and together; an agent frozen by one loses the rest of its action this step;
- moves, swaps, get_items and put_items each claim one cell (the destination, or the object in front);
  a cell goes to the earliest claimant in the order, later ones fail;
- a move needs its destination empty at the start of the step, so an agent cannot step into a cell
  another agent leaves in the same step (in MettaGrid it can, if that agent went first).
Converters then advance one tick, rewards are the change of inventory potential, and maps whose episode
ended are reset in the same step: the returned observation is the new episode's first, and the
rewards/dones/truncateds returned with it belong to the step that ended the old one.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict

from envs.config import AGENT_CHARS, LAYOUT_CHARS, GridConfig
from envs.spec import (A, ACTIONS, DIRECTIONS, EMPTY_TOKEN, F, FEATURES, FEATURE_NAMES, GLOBAL_FEATURES, ID_FEATURES,
                       INV0, ITEM, TYPE_IDS, EnvSpec)

EMPTY, WALL, BLOCK = 0, 1, 2  # fixed rows
REWARD_ITEMS = (ITEM["ore_red"], ITEM["battery_red"], ITEM["heart"])
STAT_NAMES = ("return", "length", "ore_red_gained", "battery_red_gained", "heart_gained", "invalid_actions",
              "failed_actions", "tokens_dropped")


def take(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`table[index]` for a 1-D table; a flat gather, much faster than advanced indexing on CPU."""
    return table.gather(0, index.reshape(-1)).view(index.shape)


def check_actions(actions, num_agents: int) -> None:
    """ValueError unless `actions` is an integer tensor [num_agents, 2] (on any device; out-of-range pairs are
    valid input: the env counts them as invalid actions)."""
    if not isinstance(actions, torch.Tensor) or actions.dtype.is_floating_point or actions.dtype == torch.bool:
        got = f"{actions.dtype} tensor" if isinstance(actions, torch.Tensor) else type(actions).__name__
        raise ValueError(f"actions must be an integer tensor [{num_agents}, 2] of (type, arg) per agent, got a {got}")
    if actions.shape != (num_agents, 2):
        raise ValueError(f"actions must have shape [{num_agents}, 2] (type, arg) per agent, got {tuple(actions.shape)}")


class GridEnv:
    """`num_envs` maps × `agents_per_env` agents; agent i of map e is batch row e * agents_per_env + i."""

    exact_resume = True  # state_dict holds everything: a resumed run continues the very same episodes

    def __init__(self, cfg: GridConfig):
        cfg.validate()
        self.cfg = cfg
        self.device = dev = torch.device(cfg.device)
        self.generator = torch.Generator(dev).manual_seed(cfg.seed)
        r = cfg.obs_window // 2
        self.spec = EnvSpec(
            feature_names=FEATURE_NAMES, feature_normalizations=tuple(float(n) for _, n in FEATURES),
            action_names=tuple(n for n, _ in ACTIONS), action_max_args=tuple(m for _, m in ACTIONS),
            obs_width=cfg.obs_window, obs_height=cfg.obs_window, num_tokens=cfg.obs_tokens,
            global_location=(r << 4) | r, id_features=ID_FEATURES)
        self._build_map_template()
        self._build_rows()
        self._build_window()
        E, A_, M = self.num_envs, self.agents_per_env, self.num_rows
        self.num_agents = E * A_
        # on the CPU reading a value back costs nothing; on an accelerator the step never waits for the device
        self.reads_are_free = dev.type == "cpu"
        self.agent_index = torch.arange(A_, device=dev)
        self.noop_action = torch.tensor([A["noop"], 0], device=dev)
        self.env_row_base = (torch.arange(E, device=dev) * M).repeat_interleave(A_)[:, None]  # row offset of each agent's map
        self.obj = torch.zeros(E, M, len(FEATURE_NAMES), dtype=torch.int16, device=dev)
        self.grid = torch.zeros(E, self.Hp * self.Wp, dtype=torch.int16, device=dev)
        self.pos = torch.zeros(E, A_, dtype=torch.long, device=dev)  # flat padded cell of each agent
        self.timer = torch.zeros(E, M, dtype=torch.int16, device=dev)  # converter: steps left in its phase, 0 idle
        self.cooling = torch.zeros(E, M, dtype=torch.bool, device=dev)  # converter: the phase is its cooldown
        self.decoy = torch.zeros(E, M, dtype=torch.bool, device=dev)  # takes from it pay nothing (memory task)
        self.cue_cell = torch.zeros(E, 1, dtype=torch.long, device=dev)
        self.steps = torch.zeros(E, dtype=torch.long, device=dev)
        self.limit = torch.zeros(E, dtype=torch.long, device=dev)
        self.takes = torch.zeros(E, dtype=torch.long, device=dev)
        self.last_action = torch.zeros(E, A_, 2, dtype=torch.long, device=dev)
        self.last_reward = torch.zeros(E, A_, device=dev)
        self.episode = torch.zeros(E, A_, len(STAT_NAMES), device=dev)  # running stats of current episodes
        self.finished = torch.zeros(len(STAT_NAMES) + 1, dtype=torch.float64, device=dev)  # sums + count
        self.reset()

    # --- static tables ----------------------------------------------------------------------------
    def _build_map_template(self) -> None:
        cfg = self.cfg
        self.num_envs = cfg.num_envs
        self.pad = max(cfg.obs_window // 2, 3)  # room for the window and attack reach beyond the border
        if cfg.layout is None:
            H, W = cfg.height, cfg.width
            self.agents_per_env = cfg.agents_per_env
            counts = {"mine_red": cfg.mines, "generator_red": cfg.generators, "altar": cfg.altars, "cue": 0}
        else:
            H, W = len(cfg.layout), len(cfg.layout[0])
            text = "".join(cfg.layout)
            self.agents_per_env = sum(text.count(c) for c in AGENT_CHARS)
            counts = {k: text.count(c) for c, k in LAYOUT_CHARS.items() if k in ("mine_red", "generator_red", "altar", "cue")}
        self.H, self.W = H, W
        self.Hp, self.Wp = H + 2 * self.pad, W + 2 * self.pad
        self.counts = counts

    def _cell(self, row, col):
        """Flat padded cell index of map (row, col)."""
        return (row + self.pad) * self.Wp + (col + self.pad)

    def _build_rows(self) -> None:
        cfg, dev, A_ = self.cfg, self.device, self.agents_per_env
        kinds = ["empty", "wall", "block"] + ["agent"] * A_
        for k in ("mine_red", "generator_red", "altar", "cue"):
            kinds += [k] * self.counts[k]
        self.kinds = kinds
        self.num_rows = len(kinds)
        self.agent_rows = torch.arange(3, 3 + A_, device=dev)
        self.conv0 = 3 + A_
        self.conv1 = self.conv0 + self.counts["mine_red"] + self.counts["generator_red"] + self.counts["altar"]
        self.cue_row = self.conv1 if self.counts["cue"] else -1
        # converter recipe per kind: (input item or -1, output item, cooldown, max output, initial output)
        recipe = {
            "mine_red": (-1, ITEM["ore_red"], cfg.mine_cooldown, cfg.mine_max_output, cfg.mine_initial_output),
            "generator_red": (ITEM["ore_red"], ITEM["battery_red"], cfg.generator_cooldown, cfg.generator_max_output, 0),
            "altar": (ITEM["battery_red"], ITEM["heart"], cfg.altar_cooldown, cfg.altar_max_output, cfg.altar_initial_output),
        }
        conv = [recipe[k] for k in kinds[self.conv0:self.conv1]]
        col = lambda i: torch.tensor([c[i] for c in conv], dtype=torch.long, device=dev)  # noqa: E731
        self.conv_in, self.conv_out, self.conv_cooldown, self.conv_max = col(0), col(1), col(2), col(3)
        self.is_altar = torch.zeros(self.num_rows, dtype=torch.bool, device=dev)
        self.altar_rows = torch.tensor([i for i, k in enumerate(kinds) if k == "altar"], dtype=torch.long, device=dev)
        self.is_altar[self.altar_rows] = True
        # per-row lookups over all rows (-1 where the row is no converter)
        self.row_in = torch.full((self.num_rows,), -1, dtype=torch.long, device=dev)
        self.row_out = torch.full((self.num_rows,), -1, dtype=torch.long, device=dev)
        self.row_in[self.conv0:self.conv1], self.row_out[self.conv0:self.conv1] = self.conv_in, self.conv_out
        # the feature table of a fresh episode
        init = torch.zeros(self.num_rows, len(FEATURE_NAMES), dtype=torch.int16, device=dev)
        for i, k in enumerate(kinds[1:], start=1):
            init[i, F["type_id"]] = TYPE_IDS[k]
        init[BLOCK, F["swappable"]] = 1
        init[self.agent_rows, F["group"]] = 1
        init[self.agent_rows, INV0 + ITEM["laser"]] = cfg.initial_lasers
        # as placed, MettaGrid's converters try to start: one that needs no input (a mine) and has room converts at once
        self.init_timer = torch.zeros(self.num_rows, dtype=torch.int16, device=dev)
        for i, c in enumerate(conv):
            init[self.conv0 + i, INV0 + c[1]] = c[4]
            if c[0] < 0 and c[4] < c[3]:
                init[self.conv0 + i, F["converting"]] = 1
                self.init_timer[self.conv0 + i] = cfg.conversion_ticks
        self.init_obj = init
        # reward potential: weight and cap per inventory item (items outside REWARD_ITEMS weigh 0)
        self.reward_w = torch.zeros(len(ITEM), device=dev)
        self.reward_cap = torch.full((len(ITEM),), float("inf"), device=dev)
        self.reward_w[list(REWARD_ITEMS)] = torch.tensor(cfg.reward_weights, device=dev)
        self.reward_cap[list(REWARD_ITEMS)] = torch.tensor(cfg.reward_caps, device=dev)
        self.max_args = torch.tensor([m for _, m in ACTIONS], device=dev)
        self.dir_flat = torch.tensor([dr * self.Wp + dc for dr, dc in DIRECTIONS], device=dev)
        # the cell to the right of each facing: up->right, down->left, left->up, right->down
        self.right_flat = torch.tensor([1, -1, -self.Wp, self.Wp], device=dev)
        # map template: padding and cells outside the map are empty, the border is wall
        base = torch.zeros(self.Hp, self.Wp, dtype=torch.int16)
        p = self.pad
        base[p:p + self.H, p:p + self.W] = WALL
        base[p + 1:p + self.H - 1, p + 1:p + self.W - 1] = EMPTY
        if cfg.layout is not None:
            self._fill_layout(base)
        self.base_grid = base.flatten().to(dev)
        interior = [self._cell(rr, cc) for rr in range(1, self.H - 1) for cc in range(1, self.W - 1)]
        self.interior = torch.tensor(interior, device=dev)

    def _fill_layout(self, base: torch.Tensor) -> None:
        """Fixed rows for a layout: row numbers in layout order within each kind."""
        next_row = {"mine_red": self.conv0, "cue": self.cue_row}
        next_row["generator_red"] = next_row["mine_red"] + self.counts["mine_red"]
        next_row["altar"] = next_row["generator_red"] + self.counts["generator_red"]
        agent_cells, facings, p = [], [], self.pad
        for rr, line in enumerate(self.cfg.layout):
            for cc, ch in enumerate(line):
                if ch in AGENT_CHARS:
                    agent_cells.append(self._cell(rr, cc))
                    facings.append(AGENT_CHARS[ch])
                    base[rr + p, cc + p] = 3 + len(agent_cells) - 1
                    continue
                kind = LAYOUT_CHARS[ch]
                if kind in next_row:
                    base[rr + p, cc + p] = next_row[kind]
                    next_row[kind] += 1
                else:
                    base[rr + p, cc + p] = {"empty": EMPTY, "wall": WALL, "block": BLOCK}[kind]
        self.layout_cells = torch.tensor(agent_cells, device=self.device)
        self.layout_facing = torch.tensor(facings, device=self.device)
        if self.cue_row >= 0:
            self.layout_cue = (base.flatten() == self.cue_row).nonzero()[0].to(self.device)

    def _build_window(self) -> None:
        """Window cells in token order: by Manhattan distance from the centre, then row, then col."""
        r = self.cfg.obs_window // 2
        cells = sorted(((abs(dr) + abs(dc), dr, dc) for dr in range(-r, r + 1) for dc in range(-r, r + 1)))
        self.win_offset = torch.tensor([dr * self.Wp + dc for _, dr, dc in cells], device=self.device)
        location = [((dr + r) << 4) | (dc + r) for _, dr, dc in cells] + [EMPTY_TOKEN]  # last: the sentinel
        self.win_location = torch.tensor(location, dtype=torch.uint8, device=self.device)
        self.ones = torch.ones(1, len(location), dtype=torch.int32, device=self.device)
        self.num_global = len(GLOBAL_FEATURES)
        self.num_object_tokens = self.cfg.obs_tokens - self.num_global
        self.token_index = torch.arange(self.num_object_tokens, device=self.device)
        self.global_features = torch.tensor([F[n] for n in GLOBAL_FEATURES], dtype=torch.uint8, device=self.device)
        self.feature_ids = torch.arange(len(FEATURE_NAMES), dtype=torch.int32, device=self.device)

    # --- episodes ---------------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> TensorDict:
        """Start a fresh episode on every map (reseeding first if `seed` is given)."""
        if seed is not None:
            self.generator.manual_seed(seed)
        E = self.num_envs
        self._reset_maps(torch.ones(E, dtype=torch.bool, device=self.device))
        if self.cfg.desync_episodes:
            self.limit = torch.randint(1, self.cfg.max_steps + 1, (E,), device=self.device, generator=self.generator)
        self.episode.zero_()
        self.finished.zero_()
        zeros = torch.zeros(self.num_agents, dtype=torch.bool, device=self.device)
        return self._output(self._observe_and_count(), torch.zeros(self.num_agents, device=self.device), zeros, zeros)

    def _reset_maps(self, reset: torch.Tensor) -> None:
        """Lay out a new episode on the maps where `reset [num_envs]` is True. A fresh layout is drawn for every
        map and kept where `reset` holds: a mask, not a list of maps, so a step never waits for the device."""
        E, A_, dev, g = self.num_envs, self.agents_per_env, self.device, self.generator
        grid = self.base_grid.expand(E, -1).clone()
        obj = self.init_obj.expand(E, -1, -1).clone()
        if self.cfg.layout is None:
            rows = torch.cat([self.agent_rows, torch.arange(self.conv0, self.conv1, device=dev),
                              torch.full((self.cfg.blocks,), BLOCK, device=dev),
                              torch.full((self.cfg.walls,), WALL, device=dev)])
            # distinct cells in random order: the largest of uniform draws (a partial sort, not a full one)
            pick = torch.rand(E, len(self.interior), device=dev, generator=g).topk(len(rows), 1).indices
            cells = self.interior[pick]
            grid.scatter_(1, cells, rows.to(grid.dtype).expand(E, -1))
            pos, facing = cells[:, :A_], torch.full((A_,), -1, device=dev)
        else:
            pos, facing = self.layout_cells.expand(E, -1), self.layout_facing
        random_facing = torch.randint(0, 4, (E, A_), device=dev, generator=g)
        obj[:, 3:3 + A_, F["orientation"]] = torch.where(facing >= 0, facing, random_facing).to(obj.dtype)
        decoy, cue_cell = torch.zeros_like(self.decoy), self.cue_cell
        if self.cue_row >= 0:  # the cue faces the altar that pays: 0 up (the first in reading order), 1 down
            cue = torch.randint(0, 2, (E,), device=dev, generator=g)
            obj[:, self.cue_row, F["orientation"]] = cue.to(obj.dtype)
            decoy[:, self.altar_rows] = torch.stack([cue == 1, cue == 0], 1)
            cue_cell = self.layout_cue.expand(E, 1)
            obj[:, self.agent_rows, F["frozen"]] = self.cfg.cue_steps + self.cfg.cue_delay
        r = reset[:, None]
        self.grid, self.pos = torch.where(r, grid, self.grid), torch.where(r, pos, self.pos)
        self.obj = torch.where(r[..., None], obj, self.obj)
        self.decoy, self.cue_cell = torch.where(r, decoy, self.decoy), torch.where(r, cue_cell, self.cue_cell)
        self.timer, self.cooling = torch.where(r, self.init_timer, self.timer), torch.where(r, False, self.cooling)
        self.steps, self.takes = torch.where(reset, 0, self.steps), torch.where(reset, 0, self.takes)
        self.limit = torch.where(reset, self.cfg.max_steps, self.limit)
        self.last_action = torch.where(r[..., None], self.noop_action, self.last_action)
        self.last_reward = torch.where(r, 0.0, self.last_reward)

    # --- saving and restoring: a resumed run continues exactly --------------------------------------
    STATE = ("obj", "grid", "pos", "timer", "cooling", "decoy", "cue_cell", "steps", "limit", "takes", "last_action",
             "last_reward", "episode", "finished")

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {name: getattr(self, name).clone() for name in self.STATE}
        state["generator"] = self.generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = [name for name in self.STATE if name not in state]
        if missing:
            raise ValueError(f"saved env state lacks {missing}: an older version of the env wrote it (the converters' "
                             "cooldown state came with commit bd6d65a); continue it with the version that wrote it, "
                             "or start a new run")
        for name in self.STATE:
            current = getattr(self, name)
            if state[name].shape != current.shape:
                raise ValueError(f"saved env state {name!r} has shape {list(state[name].shape)}, this env "
                                 f"{list(current.shape)}: restore with the same env configuration")
            setattr(self, name, state[name].to(self.device, current.dtype).clone())
        self.generator.set_state(state["generator"])

    # --- one step ---------------------------------------------------------------------------------
    def step(self, actions: torch.Tensor, final_obs: bool = False) -> TensorDict:
        """Apply `actions [num_agents, 2]` (type, arg); return the next observations, rewards, dones, truncateds.

        With `final_obs`, also return `final_env_obs`: the observation each agent would have seen had its
        episode not been reset (what gymnasium's same-step autoreset reports)."""
        E, A_, dev = self.num_envs, self.agents_per_env, self.device
        check_actions(actions, self.num_agents)
        self._advance_converters()  # before the actions, as MettaGrid runs its events at the start of a step
        act = actions.to(dev, torch.long).view(E, A_, 2)
        typ, arg = act[..., 0], act[..., 1]
        agents = self.obj[:, 3:3 + A_]  # a view: writes go to the table
        inv = agents[..., INV0:INV0 + len(ITEM)]
        potential_before = self._potential(inv)

        valid = (typ >= 0) & (typ < len(ACTIONS)) & (arg >= 0) & (arg <= self.max_args[typ.clamp(0, len(ACTIONS) - 1)])
        frozen = agents[..., F["frozen"]] > 0
        acting = valid & ~frozen
        typ = torch.where(acting, typ, A["noop"])
        arg = torch.where(acting, arg, 0)
        # a random order without sorting: distinct random keys (a random number, then the agent to break ties)
        order = torch.randint(0, 1 << 40, (E, A_), device=dev, generator=self.generator) * A_ + self.agent_index
        facing, front, front_row = self.facing()
        fwd = self.dir_flat[facing]

        # attacks: simultaneous, first; a frozen target loses the rest of its action
        reach = (arg // 3 + 1) * fwd + (arg % 3 - 1) * self.right_flat[facing]
        target_row = self.grid.gather(1, self.pos + reach).long()
        target = (target_row - 3).clamp(0, A_ - 1)
        is_agent = (target_row >= 3) & (target_row < 3 + A_)
        hit_ok = (typ == A["attack"]) & (inv[..., ITEM["laser"]] > 0) & is_agent & ~frozen.gather(1, target)
        inv[..., ITEM["laser"]] -= hit_ok.to(inv.dtype)
        hit = torch.zeros(E, A_, dtype=torch.long, device=dev).scatter_add_(1, target, hit_ok.long()) > 0
        typ = torch.where(hit, A["noop"], typ)

        # rotate: no contest
        turned = typ == A["rotate"]
        agents[..., F["orientation"]] = torch.where(turned, arg, facing).to(agents.dtype)

        # claims: one cell per claimant, won by the earliest in this step's order
        dest = self.pos + torch.where(arg == 0, fwd, -fwd)
        dest_free = self.grid.gather(1, dest) == EMPTY
        out_item, in_item = self.row_out[front_row], self.row_in[front_row]
        conv_inv = self.obj.gather(1, front_row[..., None].expand(-1, -1, self.obj.shape[-1]))[..., INV0:]
        out_col, in_col = out_item.clamp(min=0), in_item.clamp(min=0)
        stock = conv_inv.gather(2, out_col[..., None]).squeeze(2).long()
        decoy = self.decoy.gather(1, front_row)
        get_amt = torch.minimum(stock, self.cfg.max_inventory - inv.gather(2, out_col[..., None]).squeeze(2).long())
        get_amt = torch.where(decoy, 0, get_amt)
        # put_items gives one conversion's input (one item), as MettaGrid's put_recipe_items does, not all it holds
        put_amt = torch.minimum(inv.gather(2, in_col[..., None]).squeeze(2).long().clamp(max=1),
                                self.cfg.max_inventory - conv_inv.gather(2, in_col[..., None]).squeeze(2).long())
        wants = {
            "move": (typ == A["move"]) & dest_free,
            "get": (typ == A["get_items"]) & (out_item >= 0) & ((get_amt > 0) | decoy),
            "put": (typ == A["put_items"]) & (in_item >= 0) & (put_amt > 0),
            "swap": (typ == A["swap"]) & (front_row == BLOCK),
        }
        claim = torch.where(wants["move"], dest, torch.where(wants["get"] | wants["put"] | wants["swap"], front, -1))
        contested = (claim[:, :, None] == claim[:, None, :]) & (order[:, None, :] < order[:, :, None])
        win = (claim >= 0) & ~(contested & (claim[:, None, :] >= 0)).any(2)
        moved, got, put, swapped = (wants[k] & win for k in ("move", "get", "put", "swap"))

        # get_items / put_items: move items between the agent and the converter in front
        got_amt, put_amt = torch.where(got, get_amt, 0), torch.where(put, put_amt, 0)
        inv.scatter_add_(2, out_col[..., None], got_amt[..., None].to(inv.dtype))
        inv.scatter_add_(2, in_col[..., None], (-put_amt)[..., None].to(inv.dtype))
        flat = self.obj.view(E, -1)
        width = self.obj.shape[-1]
        flat.scatter_add_(1, front_row * width + INV0 + out_col, (-got_amt).to(flat.dtype))
        flat.scatter_add_(1, front_row * width + INV0 + in_col, put_amt.to(flat.dtype))
        self.takes += (got & self.is_altar[front_row]).sum(1)

        # move / swap: vacate the old cell (a swapped block takes it), occupy the new one
        new_pos = torch.where(moved, dest, torch.where(swapped, front, self.pos))
        agent_row = self.agent_rows.to(self.grid.dtype).expand(E, -1)
        left_behind = torch.where(swapped, BLOCK, torch.where(moved, EMPTY, agent_row.long())).to(self.grid.dtype)
        self.grid.scatter_(1, self.pos, left_behind)
        self.grid.scatter_(1, new_pos, agent_row)
        self.pos = new_pos

        # freezing counts down; new hits restart it
        left = (agents[..., F["frozen"]] - frozen.to(agents.dtype)).clamp(min=0)
        agents[..., F["frozen"]] = torch.where(hit, self.cfg.freeze_duration, left).to(agents.dtype)
        self._start_converters()  # a put (or a get that made room) starts a converter at once

        # rewards, episode bookkeeping
        reward = self._potential(inv) - potential_before
        self.steps += 1
        if self.cue_row >= 0:  # the cue vanishes once its steps are over
            keep = self.grid.gather(1, self.cue_cell)
            gone = (self.steps == self.cfg.cue_steps)[:, None]
            self.grid.scatter_(1, self.cue_cell, torch.where(gone, EMPTY, keep).to(self.grid.dtype))
        ends = self.cfg.end_after_altar_takes
        terminal = (self.takes >= ends) if ends > 0 else torch.zeros_like(self.steps, dtype=torch.bool)
        truncated = (self.steps >= self.limit) & ~terminal
        succeeded = moved | got | put | swapped | turned | hit_ok | (typ == A["noop"])
        self.last_action = torch.stack([typ, arg], -1)
        self.last_reward.copy_(reward)  # a copy: resetting a map must not zero the reward we return
        gained = [got_amt * (out_item == ITEM[i]) for i in ("ore_red", "battery_red", "heart")]
        stats = [reward, torch.ones_like(reward), *gained, ~valid, acting & ~succeeded]
        self.episode[..., :-1] += torch.stack([s.float() for s in stats], -1)

        done_env = terminal | truncated
        final = self._observe()[0] if final_obs else None
        self._finish_episodes(done_env)
        obs = self._observe_and_count()
        expand = lambda x: x[:, None].expand(E, A_).reshape(-1)  # noqa: E731
        td = self._output(obs, reward.reshape(-1), expand(terminal), expand(truncated))
        if final_obs:
            td["final_env_obs"] = final
        return td

    def facing(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each agent's orientation, the cell in front of it and the table row of what is there (self.kinds names
        it: empty, wall, block, agent, a converter), all [num_envs, agents_per_env]."""
        facing = self.obj[:, 3:3 + self.agents_per_env, F["orientation"]].long()
        front = self.pos + self.dir_flat[facing]
        return facing, front, self.grid.gather(1, front).long()

    def _potential(self, inv: torch.Tensor) -> torch.Tensor:
        return torch.minimum(inv.float() * self.reward_w, self.reward_cap).sum(-1)

    # --- converters: MettaGrid's Converter. Idle -> (takes its input) converting for conversion_ticks -> the output
    # appears -> cooling down for cooldown steps -> idle, and it starts again at once if it has input and room ---------
    def _advance_converters(self) -> None:
        """A step passes for every busy converter; a finished conversion delivers its output and starts the cooldown,
        a finished cooldown leaves the converter idle (and free to start again)."""
        c0, c1 = self.conv0, self.conv1
        if c1 == c0:
            return
        conv, timer, cooling = self.obj[:, c0:c1], self.timer[:, c0:c1], self.cooling[:, c0:c1]
        busy = timer > 0
        timer = timer - busy.to(timer.dtype)
        ended = busy & (timer == 0)
        made = ended & ~cooling
        out_col = (INV0 + self.conv_out).expand(self.num_envs, -1)[..., None]
        conv.scatter_add_(2, out_col, made.to(conv.dtype)[..., None])
        self.timer[:, c0:c1] = torch.where(made, self.conv_cooldown.to(timer.dtype), timer)
        self.cooling[:, c0:c1] = torch.where(ended, made, cooling)
        self._start_converters()

    def _start_converters(self) -> None:
        """An idle converter with room for its output and its input (a mine needs none) takes the input and starts
        converting (MettaGrid's maybe_start_converting)."""
        c0, c1 = self.conv0, self.conv1
        if c1 == c0:
            return
        conv, timer = self.obj[:, c0:c1], self.timer[:, c0:c1]
        out_col = (INV0 + self.conv_out).expand(self.num_envs, -1)[..., None]
        in_col = (INV0 + self.conv_in.clamp(min=0)).expand(self.num_envs, -1)[..., None]
        has_input = (self.conv_in < 0) | (conv.gather(2, in_col).squeeze(2) > 0)
        start = (timer == 0) & (conv.gather(2, out_col).squeeze(2) < self.conv_max) & has_input
        conv.scatter_add_(2, in_col, -(start & (self.conv_in >= 0)).to(conv.dtype)[..., None])
        timer = torch.where(start, self.cfg.conversion_ticks, timer)
        self.timer[:, c0:c1] = timer
        conv[..., F["converting"]] = (timer > 0).to(conv.dtype)  # MettaGrid's flag: converting or cooling down

    def _finish_episodes(self, done_env: torch.Tensor) -> None:
        """Add finished episodes to the statistics, then lay out fresh maps for them."""
        done = done_env[:, None].to(self.episode.dtype)
        self.finished[:-1] += (self.episode * done[..., None]).sum((0, 1)).double()
        self.finished[-1] += done.sum() * self.agents_per_env
        self.episode *= 1 - done[..., None]
        if not self.reads_are_free or done_env.any():  # skip the draws when no map ends, where asking is free
            self._reset_maps(done_env)

    def episode_stats(self) -> dict[str, float]:
        """Mean of each statistic over the agent-episodes finished since the last call (empty if none)."""
        count = self.finished[-1].item()
        sums = self.finished[:-1].tolist()
        self.finished.zero_()
        return {name: s / count for name, s in zip(STAT_NAMES, sums)} if count else {}

    # --- observations -----------------------------------------------------------------------------
    def observe(self) -> torch.Tensor:
        """`uint8 [num_agents, obs_tokens, 3]`: global tokens, then the window's objects nearest first."""
        return self._observe()[0]

    def _observe_and_count(self) -> torch.Tensor:
        """Observe, adding the tokens that did not fit to the current episodes' statistics."""
        obs, dropped = self._observe()
        self.episode[..., STAT_NAMES.index("tokens_dropped")] += dropped.view(self.num_envs, self.agents_per_env)
        return obs

    def _observe(self) -> tuple[torch.Tensor, torch.Tensor]:
        E, A_, M, dev = self.num_envs, self.agents_per_env, self.num_rows, self.device
        N, G, L = self.num_agents, self.num_global, self.num_object_tokens
        # each row's tokens: its nonzero features, packed (feature << 8 | value), in feature-id order;
        # one extra entry at the end is the padding token
        nonzero = self.obj != 0
        count = nonzero.sum(-1)  # [E, M]
        width = self.obj.shape[-1] + 1  # one spare slot takes the zero features
        slot = torch.where(nonzero, nonzero.cumsum(-1) - 1, width - 1)
        packed = torch.full((E * M * width + 1,), EMPTY_TOKEN << 8 | EMPTY_TOKEN, dtype=torch.int32, device=dev)
        packed[:-1].view(E, M, width).scatter_(2, slot, self.feature_ids << 8 | self.obj.int().clamp(0, 255))
        # the window of every agent, nearest cell first; how many tokens each cell brings
        cells = self.pos.reshape(N, 1) + self.win_offset
        rows = self.grid.gather(1, cells.view(E, -1)).view(N, -1).long() + self.env_row_base
        cell_count = take(count.view(-1), rows)
        end = cell_count.cumsum(1)
        # a sentinel cell after the window starts where the tokens end: every position past them maps to it
        start = torch.cat([end - cell_count, end[:, -1:]], 1)
        # position j belongs to the last cell starting at or before j: (cells starting at or before j) - 1
        starts_at = torch.zeros(N, L + 1, dtype=torch.int32, device=dev)
        starts_at.scatter_add_(1, start.clamp(max=L), self.ones.expand(N, -1))
        cell_of = starts_at[:, :L].cumsum(1, dtype=torch.long) - 1
        # token j is slot (j - start[cell]) of that cell's row; the sentinel points past the end: padding
        row_base = torch.cat([rows * width, torch.full_like(rows[:, :1], packed.numel())], 1) - start
        token = take(packed, (row_base.gather(1, cell_of) + self.token_index).clamp_(max=packed.numel() - 1))
        out = torch.empty(N, G + L, 3, dtype=torch.uint8, device=dev)
        out[:, G:, 0] = take(self.win_location, cell_of)
        out[:, G:, 1] = (token >> 8).to(torch.uint8)
        out[:, G:, 2] = (token & 0xFF).to(torch.uint8)
        # global tokens at the centre: episode completion, last action and arg, last reward
        out[:, :G, 0] = self.spec.global_location
        out[:, :G, 1] = self.global_features
        pct = (self.steps.float() / self.cfg.max_steps * 255).round().repeat_interleave(A_)
        out[:, 0, 2] = pct.clamp(0, 255).to(torch.uint8)
        out[:, 1:3, 2] = self.last_action.view(N, 2).to(torch.uint8)
        out[:, 3, 2] = (self.last_reward.view(N) * 100).round().clamp(0, 255).to(torch.uint8)
        return out, (end[:, -1] - L).clamp(min=0)

    def _output(self, obs, rewards, dones, truncateds) -> TensorDict:
        return TensorDict({"env_obs": obs, "rewards": rewards, "dones": dones, "truncateds": truncateds},
                          batch_size=[self.num_agents], device=self.device)
