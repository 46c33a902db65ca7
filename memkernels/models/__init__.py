"""Reference models built on the public memory ops: Memformer, Transformer-XL, vanilla.

The recurrent models share one interface: `initial_state(batch, segment_len)`
and `step(tokens, state, padding_mask=None, reset=None) -> (logits, state)`.
"""
from memkernels.models.diagnostics import SlotDiagnostics
from memkernels.models.memformer import Memformer, MemformerConfig, MemformerState, memformer_mnist, memformer_wt103
from memkernels.models.transformer_xl import (
    TransformerXL,
    TransformerXLConfig,
    TransformerXLState,
    txl_mnist,
    txl_wt103_base,
)
from memkernels.models.vanilla import VanillaConfig, VanillaTransformer

__all__ = [
    "Memformer", "MemformerConfig", "MemformerState", "SlotDiagnostics", "TransformerXL",
    "TransformerXLConfig", "TransformerXLState", "VanillaConfig", "VanillaTransformer",
    "memformer_mnist", "memformer_wt103", "txl_mnist", "txl_wt103_base",
]
