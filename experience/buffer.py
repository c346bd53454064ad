"""The segmented BPTT experience buffer: a TensorDict `[segments, bptt]` on the training device.

Each env slice (a contiguous range of agents that the policy sees together) owns one row per agent for the
whole rollout and writes one column per step into its rows; the buffer is ready when every row is full.
The batch is always total agents x bptt, so a row is exactly one agent's rollout and no slice ever needs
a second set of rows (other batch sizes would splice different time windows into one row).

Column t holds what arrived with observation t (obs, reward, done, truncated, and with a truncation the value of
the final observation the time limit cut) and what the policy did with it (action, log-prob, value). Two more
records per row: `initial_state`, the memory the row's first step started from (read in carry mode), and
`horizon`, the step that followed its last column (reward, ends, value: read with the horizon bootstrap).
"""

from __future__ import annotations

import torch
from tensordict import TensorDict

from envs.spec import EnvSpec

FIELDS = ("env_obs", "rewards", "dones", "truncateds", "final_values", "actions", "act_log_prob", "values")
HORIZON = ("rewards", "dones", "truncateds", "final_values", "values")


class SegmentedBuffer:
    def __init__(self, spec: EnvSpec, num_agents: int, bptt: int, device: torch.device | str,
                 memory_shape: tuple[int, int] = (1, 1)):
        """`memory_shape`: (layers, hidden) of the policy's LSTM state."""
        if bptt < 1:
            raise ValueError(f"bptt must be at least 1, got {bptt}")
        self.segments, self.bptt = num_agents, bptt
        S, T = num_agents, bptt
        self.data = TensorDict({
            "env_obs": torch.zeros(S, T, spec.num_tokens, 3, dtype=torch.uint8),  # observations stay bytes
            "rewards": torch.zeros(S, T),
            "dones": torch.zeros(S, T, dtype=torch.bool),
            "truncateds": torch.zeros(S, T, dtype=torch.bool),
            "final_values": torch.zeros(S, T),  # read only where truncateds is set
            "actions": torch.zeros(S, T, 2, dtype=torch.long),
            "act_log_prob": torch.zeros(S, T),
            "values": torch.zeros(S, T),
        }, batch_size=[S, T], device=device)
        self.initial_state = TensorDict({"h": torch.zeros(S, *memory_shape), "c": torch.zeros(S, *memory_shape)},
                                        batch_size=[S], device=device)
        self.horizon = self.data[:, 0].select(*HORIZON).clone()  # same fields as a column, one step
        self.reset()

    @property
    def batch_size(self) -> int:
        return self.segments * self.bptt

    def reset(self) -> None:
        """Forget the row assignment: the next rollout fills the buffer from scratch."""
        self.rows: dict[int, tuple[int, int]] = {}  # slice start -> (first row, agents)
        self.column: dict[int, int] = {}  # slice start -> next column to write
        self.next_row = 0

    def _rows(self, start: int, n: int) -> slice:
        """The rows of slice `start` (n agents), given to it the first time it writes in this rollout."""
        if start not in self.rows:
            if self.next_row + n > self.segments:
                raise ValueError(f"slice at agent {start} with {n} agents does not fit: the buffer has "
                                 f"{self.segments} rows, one per agent of the env")
            self.rows[start] = (self.next_row, n)
            self.column[start] = 0
            self.next_row += n
        row, owned = self.rows[start]
        if n != owned:
            raise ValueError(f"slice at agent {start} sent {n} agents, it owns {owned} rows")
        return slice(row, row + n)

    def store(self, td: TensorDict, start: int) -> None:
        """Write one step of slice `start` (agents start .. start + len(td)) into its rows."""
        rows, t = self._rows(start, len(td)), self.column.get(start, 0)
        if t == self.bptt:
            raise ValueError(f"slice at agent {start} already wrote all {self.bptt} steps of this rollout")
        self.data[rows, t] = td.select(*FIELDS, strict=False)  # final_values only where they were computed
        self.column[start] = t + 1

    def store_initial_state(self, start: int, h: torch.Tensor, c: torch.Tensor) -> None:
        """The memory (`[layers, agents, hidden]` each) slice `start` begins this rollout from."""
        self.initial_state[self._rows(start, h.shape[1])] = TensorDict(
            {"h": h.transpose(0, 1), "c": c.transpose(0, 1)}, batch_size=[h.shape[1]])

    def store_horizon(self, td: TensorDict, start: int) -> None:
        """What followed slice `start`'s last column: the reward and ends that came with the next observation, and
        that observation's value."""
        self.horizon[self._rows(start, len(td))] = td.select(*HORIZON, strict=False)

    def state_of(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The initial memory of segments `index`, as the LSTM takes it: (h, c), each `[layers, len(index), hidden]`."""
        state = self.initial_state[index]
        return state["h"].transpose(0, 1).contiguous(), state["c"].transpose(0, 1).contiguous()

    @property
    def ready(self) -> bool:
        return self.next_row == self.segments and all(t == self.bptt for t in self.column.values())
