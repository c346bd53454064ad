"""Recurrent state: the one LSTM-memory implementation every policy uses.

State `[layers, B, hidden]` (h and c) is kept per env slice, keyed by the slice's first agent index
(`training_env_id_start`), and always stored detached. Before a row is used, its state is zeroed if its
incoming observation starts a new episode (`dones | truncateds` arrived with it).

Acting runs one step per call. Training unrolls `[B, T]` segments from the stored state (zero after the
trainer's `reset_memory()`) and zeroes the state at every episode start inside a segment, exactly where
acting did, so training recomputes the very log-probs the rollout recorded.
"""

from __future__ import annotations

import torch
from torch import nn

# "metta": Metta's init, every LSTM bias 1. nn.LSTM has two bias vectors, so each gate starts at +2: the
# cell saturates (|c| ~ 5 after a few steps) and the output barely depends on the input (tests measure it).
# "forget": the usual remedy, forget-gate bias 1 and every other bias 0.
LSTM_INITS = ("metta", "forget")


class LSTMMemory(nn.Module):
    def __init__(self, input_size: int, hidden_size: int, num_layers: int, lstm_init: str = "metta"):
        super().__init__()
        if lstm_init not in LSTM_INITS:
            raise ValueError(f"lstm_init={lstm_init!r}: choose one of {LSTM_INITS}")
        self.hidden_size, self.num_layers, self.lstm_init = hidden_size, num_layers, lstm_init
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers)
        for name, p in self.lstm.named_parameters():  # orthogonal weights; biases by lstm_init
            if "weight" in name:
                nn.init.orthogonal_(p)
            elif lstm_init == "metta":
                nn.init.constant_(p, 1.0)
            else:
                nn.init.zeros_(p)
        if lstm_init == "forget":
            self.set_forget_bias(1.0)
        self.state: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.static_unroll = False  # see unroll

    def set_forget_bias(self, bias: float) -> None:
        """Start every layer's forget gate at `bias` (lstm_init forget's is 1): at first the cell keeps sigmoid(bias)
        of itself per step (1: 0.73; 2: 0.88), so an early input lasts longer."""
        if self.lstm_init != "forget":
            raise ValueError(f"lstm_forget_bias={bias} sets the forget gate of lstm_init 'forget'; this LSTM's init "
                             f"is {self.lstm_init!r} (every bias 1): use lstm_init='forget' (--lstm-init forget)")
        with torch.no_grad():  # gates are ordered input, forget, cell, output
            for layer in range(self.num_layers):
                getattr(self.lstm, f"bias_ih_l{layer}")[self.hidden_size:2 * self.hidden_size] = bias

    # --- the memory API the trainer uses -----------------------------------------------------------
    def reset_memory(self) -> None:
        self.state = {}

    def get_memory(self) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        return dict(self.state)

    def set_memory(self, state: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.state = {k: (h.detach(), c.detach()) for k, (h, c) in state.items()}

    def load(self, key: int, batch: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The stored state of slice `key`, or zeros if there is none of this batch size."""
        h_c = self.state.get(key)
        if h_c is None or h_c[0].shape[1] != batch:
            zeros = like.new_zeros(self.num_layers, batch, self.hidden_size)
            return zeros, zeros
        return h_c

    def _store(self, key: int, h: torch.Tensor, c: torch.Tensor) -> None:
        self.state[key] = (h.detach(), c.detach())  # the next call's graph never reaches back into this one

    # --- acting: one step ---------------------------------------------------------------------------
    def step(self, x: torch.Tensor, starts: torch.Tensor, key: int) -> torch.Tensor:
        """`x [B, input]`, `starts [B]` (episode starts here) -> `[B, hidden]`; advances slice `key`'s state."""
        h, c = self.load(key, x.shape[0], x)
        keep = (~starts).to(x.dtype)[None, :, None]
        out, (h, c) = self.lstm(x[None], (h * keep, c * keep))
        self._store(key, h, c)
        return out[0]

    # --- training: a [B, T] unroll ------------------------------------------------------------------
    def unroll(self, x: torch.Tensor, starts: torch.Tensor, key: int) -> torch.Tensor:
        """`x [B, T, input]`, `starts [B, T]` -> `[B, T, hidden]`, one LSTM call per stretch between the time steps
        where some row starts an episode (a single call when none does). Finding them reads `starts` back to the
        host; with `static_unroll` every step is a stretch, the same calls whatever the episodes do, so that a CUDA
        graph can record the update (trainer/cuda_graph.py). On a CPU the fewer, longer calls are faster."""
        B, T = starts.shape
        h, c = self.load(key, B, x)
        x = x.transpose(0, 1)  # the LSTM wants time first
        cuts = range(T + 1) if self.static_unroll else [0, *(starts[:, 1:].any(0).nonzero().squeeze(1) + 1).tolist(), T]
        keep = (~starts).to(x.dtype).T[:, None, :, None]  # [T, 1, B, 1]: 0 where a row's episode starts
        pieces = []
        for a, b in zip(cuts[:-1], cuts[1:]):
            piece, (h, c) = self.lstm(x[a:b], (h * keep[a], c * keep[a]))
            pieces.append(piece)
        self._store(key, h, c)
        return torch.cat(pieces).transpose(0, 1)
