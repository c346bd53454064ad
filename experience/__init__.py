"""The segmented BPTT experience buffer and minibatch sampling of whole segments."""

from experience.buffer import SegmentedBuffer
from experience.sampling import prio_beta, sample_segments, shuffled_minibatches

__all__ = ["SegmentedBuffer", "prio_beta", "sample_segments", "shuffled_minibatches"]
