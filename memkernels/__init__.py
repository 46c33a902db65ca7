"""memkernels: fused kernels for the external dynamic memory of Memformer.

The three ops (`memory_read`, `slot_attention`, `memory_norm`) are
differentiable torch.library custom ops with a `backend=` argument; see
`memkernels.dispatch` for how a backend is chosen and `memkernels.reference`
for their semantics in plain PyTorch. `memkernels.nn` has the drop-in modules.
"""
from memkernels.dispatch import BackendUnavailable
from memkernels.ops import flops as _flops  # noqa: F401  (FLOP formulas for FlopCounterMode)
from memkernels.ops.memory_norm import memory_norm
from memkernels.ops.memory_read import memory_read
from memkernels.ops.slot_attention import slot_attention

__version__ = "0.1.0"

__all__ = ["BackendUnavailable", "memory_norm", "memory_read", "slot_attention", "__version__"]
