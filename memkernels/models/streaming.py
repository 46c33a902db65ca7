"""Streaming inference: one segment per call, the model's step replayed from a CUDA graph.

    runner = StreamingRunner(model.eval(), batch_size=16, segment_len=64)
    for tokens in stream:                          # (16, 64) long, on the model's device
        logits = runner(tokens)                    # (16, 64, vocab): valid until the next call
    runner(tokens, padding_mask=mask, reset=starts)  # a padded segment; rows in `starts` begin anew

Eager PyTorch spends more time launching a segment's few hundred small kernels
than the GPU spends running them. On CUDA the runner captures the step once, in
a `torch.cuda.CUDAGraph` over static buffers (tokens, padding mask, reset and
the carried state), and each call copies the inputs in and replays the graph:
one launch per segment. Elsewhere (CPU), or with `graphs=False`, it calls the
model eagerly with the arguments as given, so its outputs are bitwise those of
calling `step` yourself.

* `output="logits"` runs `model.step` and returns its logits;
  `output="hidden"` runs `model.body` and returns hidden states (B, L, d), for
  a head applied outside the runner (`model.head.log_prob(hidden, targets)`:
  the adaptive softmax's routing has data-dependent shapes, which a graph
  cannot hold).
* The output is the runner's own buffer, overwritten by the next call: clone it
  to keep it. `state` is the carried state after the last call, likewise.
* The state must keep its shape from segment to segment: build Transformer-XL
  with `fixed_cache=True`. A step with write observers (`SlotDiagnostics`)
  cannot be captured: their host code would run once, at capture.
* Inference only: the model must be in eval mode; it runs without autograd.
  Parameters may change in place between calls (the graph reads them where
  they are), but must not be replaced.
"""
import torch
from torch import Tensor

WARMUP_STEPS = 3  # eager runs before capture, on a side stream, as torch's CUDA-graph notes prescribe


class StreamingRunner:
    def __init__(self, model, batch_size: int, segment_len: int, *, output: str = "logits",
                 graphs: bool | None = None):
        """graphs: True to capture (CUDA only), False for eager, None for CUDA graphs wherever on CUDA."""
        if model.training:
            raise ValueError("StreamingRunner runs inference: call model.eval() first")
        if output not in ("logits", "hidden"):
            raise ValueError(f"output must be 'logits' or 'hidden', got {output!r}")
        weight = next(model.parameters())
        self.model, self.batch_size, self.segment_len = model, batch_size, segment_len
        self.device = weight.device
        self._forward = model.step if output == "logits" else model.body
        if graphs is None:
            graphs = self.device.type == "cuda"
        if graphs and self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device; the model is on {self.device}: pass graphs=False")
        if graphs and getattr(model, "write_observers", None):
            raise ValueError("the model has write observers (SlotDiagnostics): their host code cannot be "
                             "replayed from a CUDA graph; pass graphs=False while observing")
        self._graph = None
        self._state = self._fresh_state()
        if graphs:
            self._capture()

    @property
    def graphed(self) -> bool:
        return self._graph is not None

    @property
    def state(self):
        return self._state

    def reset_state(self) -> None:
        """Every row starts a new document."""
        if self._graph is None:
            self._state = self._fresh_state()
        else:
            for buffer, fresh in zip(self._state, self.model.initial_state(self.batch_size, self.segment_len)):
                buffer.copy_(fresh)

    @torch.no_grad()
    def __call__(self, tokens: Tensor, padding_mask: Tensor | None = None, reset: Tensor | None = None) -> Tensor:
        """tokens (B, L) long; padding_mask (B, L) bool, True = real token; reset (B,) bool."""
        self._check(tokens, padding_mask, reset)
        if self._graph is None:
            output, state = self._forward(tokens, self._state, padding_mask, reset)
            self._check_static(state)
            self._state = state
            return output
        self._tokens.copy_(tokens)
        if padding_mask is None:
            self._padding_mask.fill_(True)
        else:
            self._padding_mask.copy_(padding_mask)
        if reset is None:
            self._reset.fill_(False)
        else:
            self._reset.copy_(reset)
        self._graph.replay()
        return self._output

    def _fresh_state(self):
        """The initial state in buffers of its own (dense: the initial memory is a broadcast view)."""
        with torch.no_grad():
            state = self.model.initial_state(self.batch_size, self.segment_len)
            return type(state)(*(t.contiguous().clone() for t in state))

    def _check(self, tokens, padding_mask, reset):
        shape = (self.batch_size, self.segment_len)
        if tokens.shape != shape or tokens.dtype != torch.long or tokens.device != self.device:
            raise ValueError(f"tokens must be {shape} long on {self.device} (pad the last segment and pass "
                             f"padding_mask); got {tuple(tokens.shape)} {tokens.dtype} on {tokens.device}")
        if padding_mask is not None and (padding_mask.shape != shape or padding_mask.dtype != torch.bool):
            raise ValueError(f"padding_mask must be {shape} bool; got {tuple(padding_mask.shape)} "
                             f"{padding_mask.dtype}")
        if reset is not None and (reset.shape != (self.batch_size,) or reset.dtype != torch.bool):
            raise ValueError(f"reset must be ({self.batch_size},) bool; got {tuple(reset.shape)} {reset.dtype}")

    def _check_static(self, new_state):
        if [t.shape for t in new_state] != [t.shape for t in self._state]:
            raise ValueError(
                f"{type(self.model).__name__}'s state changed shape over a segment "
                f"({[tuple(t.shape) for t in self._state]} -> {[tuple(t.shape) for t in new_state]}); the "
                "runner needs a fixed-shape state (TransformerXL: TransformerXLConfig(fixed_cache=True))")

    def _capture(self):
        shape = (self.batch_size, self.segment_len)
        self._tokens = torch.zeros(shape, dtype=torch.long, device=self.device)
        self._padding_mask = torch.ones(shape, dtype=torch.bool, device=self.device)
        self._reset = torch.zeros(self.batch_size, dtype=torch.bool, device=self.device)
        args = (self._tokens, self._state, self._padding_mask, self._reset)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.no_grad(), torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):  # outputs discarded: the state buffers are left as they are
                _, new_state = self._forward(*args)
            self._check_static(new_state)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            self._output, new_state = self._forward(*args)
            for buffer, new in zip(self._state, new_state):
                buffer.copy_(new)
        self._graph = graph
