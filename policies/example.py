"""Example: the simplest correct recurrent policy. Read this first, then policies/base.py.

Every policy is four parts handed to RecurrentPolicy, which runs them in the same order for acting
(one step) and training ([B, T] segments):
"""

from __future__ import annotations

from torch import nn

from envs.spec import EnvSpec
from policies.base import RecurrentPolicy, init_layer
from policies.memory import LSTMMemory
from policies.tokens import TokensToBox


class Example(RecurrentPolicy):
    def __init__(self, spec: EnvSpec, hidden: int = 128, clip_range: float = 0.0, lstm_init: str = "forget"):
        # 1. Encoder: tokens -> a [features, rows, cols] box (values normalised by the env's divisors),
        #    flattened, then one layer to `hidden` numbers.
        box_size = spec.num_features * spec.obs_height * spec.obs_width
        encoder = nn.Sequential(TokensToBox(spec), nn.Flatten(), init_layer(nn.Linear(box_size, hidden)), nn.ReLU())
        # 2. Memory: an LSTM whose state is kept per env slice between acting steps, zeroed at episode
        #    starts, and reset the same way inside training segments (policies/memory.py).
        #    Its forget gate starts biased open (lstm_init="forget"), so it remembers from the start.
        memory = LSTMMemory(hidden, hidden, num_layers=1, lstm_init=lstm_init)
        # 3. Critic: the LSTM output -> the value of the state.
        critic = init_layer(nn.Linear(hidden, 1))
        # 4. Actor: the LSTM output -> one logit per valid (type, arg) pair; RecurrentPolicy samples from
        #    their softmax and maps the index back to (type, arg) with the env's action table.
        actor = init_layer(nn.Linear(hidden, spec.num_action_pairs), gain=0.01)  # near-uniform at first
        super().__init__(spec, encoder, memory, critic, actor, clip_range)
