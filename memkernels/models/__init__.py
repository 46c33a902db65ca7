"""Reference models built on the public memory ops: Memformer, Transformer-XL, a key-value memory
store (KVMemoryTransformer), a DNC memory (DNCTransformer), vanilla.

The recurrent models share one interface: `initial_state(batch, segment_len)`,
`body(tokens, state, padding_mask=None, reset=None) -> (hidden, state)`, an
output head `model.head` (`logits(hidden)`, `log_prob(hidden, targets)`), and
`step(...) -> (logits, state)`, which is `body` then `head.logits`.
`StreamingRunner` streams them segment by segment from a CUDA graph.
"""
from memkernels.models.adaptive import WT103_CUTOFFS, AdaptiveSoftmax, FullSoftmax
from memkernels.models.diagnostics import SlotDiagnostics
from memkernels.models.dnc import DNCConfig, DNCMemory, DNCState, DNCTransformer
from memkernels.models.kv_memory import KVMemoryConfig, KVMemoryState, KVMemoryTransformer
from memkernels.models.memformer import Memformer, MemformerConfig, MemformerState, memformer_mnist, memformer_wt103
from memkernels.models.streaming import StreamingRunner
from memkernels.models.transformer_xl import (
    TransformerXL,
    TransformerXLConfig,
    TransformerXLState,
    txl_mnist,
    txl_wt103_base,
)
from memkernels.models.vanilla import VanillaConfig, VanillaTransformer
from memkernels.models.zipf import zipf_tokens

__all__ = [
    "WT103_CUTOFFS", "AdaptiveSoftmax", "DNCConfig", "DNCMemory", "DNCState", "DNCTransformer", "FullSoftmax",
    "KVMemoryConfig", "KVMemoryState", "KVMemoryTransformer", "Memformer", "MemformerConfig", "MemformerState",
    "SlotDiagnostics", "StreamingRunner", "TransformerXL", "TransformerXLConfig", "TransformerXLState",
    "VanillaConfig", "VanillaTransformer", "memformer_mnist", "memformer_wt103", "txl_mnist", "txl_wt103_base",
    "zipf_tokens",
]
