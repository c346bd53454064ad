"""The segmented BPTT experience buffer: a TensorDict `[segments, bptt]` on the training device.

Each env slice (a contiguous range of agents that the policy sees together) owns one row per agent for the
whole rollout and writes one column per step into its rows; the buffer is ready when every row is full.
The batch is always total agents x bptt, so a row is exactly one agent's rollout and no slice ever needs
a second set of rows (other batch sizes would splice different time windows into one row).

Column t holds what arrived with observation t (obs, reward, done, truncated) and what the policy did
with it (action, log-prob, value).
"""

from __future__ import annotations

import torch
from tensordict import TensorDict

from envs.spec import EnvSpec

FIELDS = ("env_obs", "rewards", "dones", "truncateds", "actions", "act_log_prob", "values")


class SegmentedBuffer:
    def __init__(self, spec: EnvSpec, num_agents: int, bptt: int, device: torch.device | str):
        if bptt < 1:
            raise ValueError(f"bptt must be at least 1, got {bptt}")
        self.segments, self.bptt = num_agents, bptt
        S, T = num_agents, bptt
        self.data = TensorDict({
            "env_obs": torch.zeros(S, T, spec.num_tokens, 3, dtype=torch.uint8),  # observations stay bytes
            "rewards": torch.zeros(S, T),
            "dones": torch.zeros(S, T, dtype=torch.bool),
            "truncateds": torch.zeros(S, T, dtype=torch.bool),
            "actions": torch.zeros(S, T, 2, dtype=torch.long),
            "act_log_prob": torch.zeros(S, T),
            "values": torch.zeros(S, T),
        }, batch_size=[S, T], device=device)
        self.reset()

    @property
    def batch_size(self) -> int:
        return self.segments * self.bptt

    def reset(self) -> None:
        """Forget the row assignment: the next rollout fills the buffer from scratch."""
        self.rows: dict[int, tuple[int, int]] = {}  # slice start -> (first row, agents)
        self.column: dict[int, int] = {}  # slice start -> next column to write
        self.next_row = 0

    def store(self, td: TensorDict, start: int) -> None:
        """Write one step of slice `start` (agents start .. start + len(td)) into its rows."""
        if start not in self.rows:
            if self.next_row + len(td) > self.segments:
                raise ValueError(f"slice at agent {start} with {len(td)} agents does not fit: the buffer has "
                                 f"{self.segments} rows, one per agent of the env")
            self.rows[start] = (self.next_row, len(td))
            self.column[start] = 0
            self.next_row += len(td)
        row, n = self.rows[start]
        t = self.column[start]
        if n != len(td):
            raise ValueError(f"slice at agent {start} sent {len(td)} agents, it owns {n} rows")
        if t == self.bptt:
            raise ValueError(f"slice at agent {start} already wrote all {self.bptt} steps of this rollout")
        self.data[row:row + n, t] = td.select(*FIELDS)
        self.column[start] = t + 1

    @property
    def ready(self) -> bool:
        return self.next_row == self.segments and all(t == self.bptt for t in self.column.values())
