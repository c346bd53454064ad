"""One rank of a torchrun job for tests/test_distributed.py: trains a small nav run and records, after every update,
a digest of its weights; rank 0 writes every rank's digests and its final weights to OUT.

    torchrun --standalone --nproc-per-node 2 tests/ddp_worker.py OUT [--same-seeds]
"""

import hashlib
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from trainer import Trainer, TrainConfig, distributed  # noqa: E402
from trainer.config import METTA  # noqa: E402

out, same_seeds = sys.argv[1], "--same-seeds" in sys.argv
if same_seeds:  # every rank gets rank 0's envs and random streams: the job must equal one process
    distributed.rank_seed = lambda seed, rank: seed
torch.set_num_threads(1)
cfg = TrainConfig(**METTA).replace(env="nav", num_envs=8, bptt=16, minibatch_size=64, total_steps=2 * 8 * 16 * 4,
                                   prio_alpha=0.5, env_overrides={"max_steps": 10}, log_dir=os.path.join(out, "logs"),
                                   checkpoint_interval=1000, device="cpu")  # gloo: one GPU cannot hold two ranks
run = Trainer(cfg)
digests = []
for _ in range(run.num_updates):
    run.train(updates=1, quiet=True)
    weights = torch.cat([p.detach().flatten() for p in run.policy.parameters()])
    digests.append(hashlib.sha256(weights.numpy().tobytes()).hexdigest())
every = run.ranks.gather(digests)
if run.ranks.main:
    with open(os.path.join(out, "digests.json"), "w") as f:
        json.dump(every, f)
    torch.save({k: v.clone() for k, v in run.policy.state_dict().items()}, os.path.join(out, "weights.pt"))
run.ranks.close()
