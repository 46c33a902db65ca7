"""Training schemes for segment-recurrent models (see `memkernels.training.mrbp`)."""
from memkernels.models.segments import Segment, split_segments
from memkernels.training.mrbp import bptt, checkpointed_bptt, mrbp

__all__ = ["Segment", "bptt", "checkpointed_bptt", "mrbp", "split_segments"]
