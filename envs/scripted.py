"""A scripted player that reads the gridworld's full state: the score learning is judged against.

Every step, each agent that is not frozen picks the first goal that exists on its map:

    1. an altar holding hearts                     -> take them (get_items)
    2. a battery in its inventory                  -> put it into an altar (put_items)
    3. a generator holding batteries               -> take them
    4. ore in its inventory                        -> put it into a generator
    5. a mine holding ore                          -> take it
    else wait beside the nearest altar

then walks the shortest path (breadth-first, around walls, blocks, objects and other agents) to a cell beside the
nearest such object, turns to face it and uses it. It moves backward instead of turning round. Decoy altars (the
memory task's wrong one, known from the state, as if the cue were remembered perfectly) are never goals. This
plays nav and memory optimally up to ties and contests; in the arena it is a greedy routine without coordination,
so its score is a floor for the best possible, not the best itself.

    from envs.scripted import ScriptedPlayer
    player = ScriptedPlayer(env)
    td = env.step(player.act())
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch

from envs.grid import EMPTY, GridEnv
from envs.spec import DIRECTIONS, A, F, INV0, ITEM

GET, PUT = A["get_items"], A["put_items"]


class ScriptedPlayer:
    def __init__(self, env: GridEnv):
        if not isinstance(env, GridEnv):
            raise ValueError("the scripted player reads our gridworld's state; it cannot play the real MettaGrid")
        self.env = env
        kinds = np.array(env.kinds)
        self.rows = {k: np.flatnonzero(kinds == k) for k in ("altar", "generator_red", "mine_red")}
        self.steps = [dr * env.Wp + dc for dr, dc in DIRECTIONS]  # flat offset of up, down, left, right

    def act(self) -> torch.Tensor:
        """`[num_agents, 2]` actions for the env's current state."""
        env = self.env
        grid, pos = env.grid.cpu().numpy(), env.pos.cpu().numpy()
        obj, decoy = env.obj.cpu().numpy(), env.decoy.cpu().numpy()
        actions = np.tile([A["noop"], 0], (env.num_agents, 1))
        for e in range(env.num_envs):
            for a in range(env.agents_per_env):
                me = obj[e, 3 + a]
                if me[F["frozen"]] == 0:
                    actions[e * env.agents_per_env + a] = self._act(grid[e], pos[e, a], me, obj[e], decoy[e])
        return torch.as_tensor(actions, device=env.device)

    def _goals(self, me: np.ndarray, obj: np.ndarray, decoy: np.ndarray) -> tuple[np.ndarray, int]:
        """The rows of the first goal that exists, and the action to use on them."""
        def holding(rows, item):
            return rows[obj[rows, INV0 + ITEM[item]] > 0]

        altars = self.rows["altar"][~decoy[self.rows["altar"]]]
        for rows, action in ((holding(altars, "heart"), GET),
                             (altars if me[INV0 + ITEM["battery_red"]] else altars[:0], PUT),
                             (holding(self.rows["generator_red"], "battery_red"), GET),
                             (self.rows["generator_red"] if me[INV0 + ITEM["ore_red"]] else altars[:0], PUT),
                             (holding(self.rows["mine_red"], "ore_red"), GET)):
            if len(rows):
                return rows, action
        return altars, A["noop"]

    def _act(self, grid: np.ndarray, start: int, me: np.ndarray, obj: np.ndarray, decoy: np.ndarray) -> list[int]:
        rows, use = self._goals(me, obj, decoy)
        facing = int(me[F["orientation"]])
        targets = set(rows.tolist())
        # breadth-first from the agent over empty cells; stop at the first cell beside a goal
        first = {start: None}  # cell -> the direction of the first step towards it
        queue = deque([start])
        while queue:
            cell = queue.popleft()
            for d, step in enumerate(self.steps):
                if int(grid[cell + step]) in targets:
                    if cell == start:  # beside it already: face it, then use it
                        return [use, 0] if d == facing else [A["rotate"], d]
                    return self._walk(first[cell], facing)
            for d, step in enumerate(self.steps):
                nxt = cell + step
                if nxt not in first and grid[nxt] == EMPTY:
                    first[nxt] = d if cell == start else first[cell]
                    queue.append(nxt)
        return [A["noop"], 0]  # no goal reachable

    @staticmethod
    def _walk(d: int, facing: int) -> list[int]:
        if d == facing:
            return [A["move"], 0]
        if d == facing ^ 1:  # up/down and left/right are pairs: 0-1, 2-3
            return [A["move"], 1]
        return [A["rotate"], d]


def random_actions(env, generator: torch.Generator) -> torch.Tensor:
    """A uniformly random valid (type, arg) pair per agent."""
    pairs = env.spec.action_pairs().to(env.device)
    return pairs[torch.randint(len(pairs), (env.num_agents,), generator=generator, device=env.device)]


def play(env, choose, episodes: int) -> dict[str, float]:
    """Step `env` with `choose()` until `episodes` agent-episodes ended; the mean of each episode statistic."""
    env.reset()
    totals, finished = {}, 0
    while finished < episodes:
        td = env.step(choose())
        ended = int((td["dones"] | td["truncateds"]).sum())
        if ended:
            for k, v in env.episode_stats().items():
                totals[k] = totals.get(k, 0.0) + v * ended
            finished += ended
    return {k: v / finished for k, v in totals.items()}
