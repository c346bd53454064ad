"""Draw a rollout's [segments, bptt] grid as text: where episodes start, and which minibatches read each segment.
docs/walkthrough.md shows this output (a test checks it is the real one).

    python scripts/segments_diagram.py
"""

from __future__ import annotations

import tempfile

import torch

from trainer import TrainConfig, Trainer

LEGEND = ("row = one agent's segment (its rollout), column = time step t, as the buffer stores them\n"
          "  .  a step inside an episode\n"
          "  D  a terminal arrived with this observation: the memory is zeroed before this step (acting and training)\n"
          "  T  a truncation arrived with this observation (the time limit): zeroed the same way\n"
          "right: the minibatches of one update that read the row (prioritized sampling at alpha 0: independent draws)")


def main() -> None:
    with tempfile.TemporaryDirectory() as logs:
        cfg = TrainConfig(env="nav", num_envs=8, bptt=24, minibatch_size=48, total_steps=8 * 24, seed=1,
                          env_overrides={"max_steps": 10}, log_dir=logs, torch_threads=1,
                          device="cpu")  # the page shows a CPU's draws: a GPU's generator draws others
        trainer = Trainer(cfg)
        trainer.rollout()
        data = trainer.buffer.data
        reads: dict[int, list[int]] = {s: [] for s in range(trainer.buffer.segments)}
        ratio = torch.ones_like(data["values"])
        for m, (index, _, _) in enumerate(trainer.minibatches(ratio)):
            for s in index.tolist():
                reads[s].append(m + 1)
    print(LEGEND + "\n")
    print("     t " + "".join(str(t % 10) for t in range(cfg.bptt)) + "   minibatches")
    for s in range(trainer.buffer.segments):
        marks = "".join("D" if d else "T" if u else "." for d, u in zip(data["dones"][s].tolist(),
                                                                        data["truncateds"][s].tolist()))
        print(f"row {s}  {marks}   {', '.join(map(str, reads[s])) or 'none: not trained on'}")


if __name__ == "__main__":
    main()
