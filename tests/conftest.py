import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# under pytest-xdist (-n auto: a worker per core) each worker takes one thread, or they would spin against each other
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))

# The device of the tests that run wherever the trainer can (on a GPU machine, the GPU); a test bound to numbers
# recorded on a CPU, or to a CPU-only mechanism, says device="cpu" itself.
DEVICE = os.environ.get("MINIPPO_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")


def pytest_collection_modifyitems(items):
    # The learning runs take most of the suite's time. `-n auto --dist worksteal` gives each worker one contiguous
    # share of this list at the start: put one learning run at the head of a share each, so they run side by side.
    slow = [item for item in items if item.path.name == "test_learning.py"]
    rest = [item for item in items if item.path.name != "test_learning.py"]
    if slow:
        share = len(items) // len(slow)
        items[:] = [item for k, run in enumerate(slow) for item in (run, *rest[k * (share - 1):(k + 1) * (share - 1)])]
        items += rest[len(slow) * (share - 1):]
