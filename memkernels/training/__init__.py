"""Training schemes for segment-recurrent models (see `memkernels.training.mrbp`)."""
from memkernels.training.mrbp import Segment, bptt, checkpointed_bptt, mrbp, split_segments

__all__ = ["Segment", "bptt", "checkpointed_bptt", "mrbp", "split_segments"]
