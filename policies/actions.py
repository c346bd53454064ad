"""One categorical over all valid (type, arg) pairs: the index tables and Metta's bilinear actor head."""

from __future__ import annotations

import torch
from torch import nn

from envs.spec import EnvSpec


class ActionTable(nn.Module):
    """index = type + cum[type] + arg, with cum[type] = sum of the max args of the types before it;
    `pairs[index]` goes back. Built from the env's declared action types and max args."""

    def __init__(self, spec: EnvSpec):
        super().__init__()
        self.register_buffer("pairs", spec.action_pairs(), persistent=False)
        self.register_buffer("cum", spec.action_cum(), persistent=False)
        self.num_actions = len(self.pairs)

    def to_index(self, actions: torch.Tensor) -> torch.Tensor:
        actions = actions.long()
        return actions[..., 0] + self.cum[actions[..., 0]] + actions[..., 1]

    def to_pairs(self, index: torch.Tensor) -> torch.Tensor:
        return self.pairs[index]


class BilinearActionHead(nn.Module):
    """logit_a = tanh(h W) . e_a + b: a query from the hidden state scored against a learned embedding per
    action (Metta's actor head). The bias is shared by all actions, so it cancels in the softmax."""

    def __init__(self, hidden: int, num_actions: int, embed_dim: int = 16, max_actions: int = 100):
        super().__init__()
        if num_actions > max_actions:
            raise ValueError(f"{num_actions} actions exceed the head's {max_actions} action embeddings; "
                             "raise max_actions")
        self.num_actions = num_actions
        self.W = nn.Parameter(torch.empty(hidden, embed_dim))
        self.bias = nn.Parameter(torch.zeros(1))
        self.embeddings = nn.Embedding(max_actions, embed_dim)
        nn.init.orthogonal_(self.W)
        with torch.no_grad():
            nn.init.orthogonal_(self.embeddings.weight)
            self.embeddings.weight.mul_(0.1 / self.embeddings.weight.abs().max())

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        query = torch.tanh(h @ self.W)
        return query @ self.embeddings.weight[:self.num_actions].T + self.bias

