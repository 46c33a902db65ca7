"""Memory-slot diagnostics: what each slot does when the writer runs (paper Figure 6).

    with SlotDiagnostics(model) as diag:
        ... run segments ...
    diag.self_weights   # (segments, B, K): weight each slot kept on itself
    diag.slot_types()   # (segments, B, K) of "retaining" / "aggregating" / "rewritten"

A slot that keeps most of its weight on itself retains its content; one that
puts almost all of it on the tokens is rewritten; in between it aggregates.
"""
import torch

RETAINING, AGGREGATING, REWRITTEN = "retaining", "aggregating", "rewritten"


class SlotDiagnostics:
    def __init__(self, model, retain_above: float = 0.9, rewrite_below: float = 0.1):
        self.model, self.retain_above, self.rewrite_below = model, retain_above, rewrite_below
        self._weights: list[torch.Tensor] = []

    def _observe(self, writer, memory, x, key_padding_mask):
        self._weights.append(writer.self_weight(memory, x, key_padding_mask).mean(-1).cpu())

    def __enter__(self):
        self.model.write_observers.append(self._observe)
        return self

    def __exit__(self, *exc):
        self.model.write_observers.remove(self._observe)

    @property
    def self_weights(self) -> torch.Tensor:
        return torch.stack(self._weights)

    def slot_types(self) -> list:
        """Nested lists [segment][sample][slot] of slot type names."""
        def kind(w):
            return RETAINING if w > self.retain_above else REWRITTEN if w < self.rewrite_below else AGGREGATING
        return [[[kind(w) for w in sample.tolist()] for sample in seg] for seg in self.self_weights]
