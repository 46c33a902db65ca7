"""Malformed inputs for every entry point, and a runner that survives a crash.

    python tests/bad_inputs.py [FIRST_CASE_INDEX]

Each case calls one entry point (a public op with one backend, or a registered op
`torch.ops.memkernels.*` directly) with one malformed argument, and prints a JSON line when it
starts and one with what it raised. A case that kills the process (a segfault in a kernel or
a C++ check) leaves its "start" line last: tests/test_bad_inputs.py reports it as that case's
failure and runs the rest in a fresh process from the next index.
"""
import json
import sys

import torch

import memkernels
from memkernels import dispatch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# An input on another device than the rest: the CPU beside a GPU, or the meta device
# beside the CPU.
OTHER_DEVICE = torch.device("cpu" if DEVICE.type == "cuda" else "meta")
_ops = torch.ops.memkernels


def _t(*shape, dtype=torch.float32, device=DEVICE):
    if dtype.is_floating_point:
        return torch.randn(*shape, dtype=dtype, device=device)
    return torch.zeros(*shape, dtype=dtype, device=device)


def _read_inputs():
    return {"q": _t(2, 5, 3, 8), "k": _t(2, 4, 3, 8), "v": _t(2, 4, 3, 8)}


def _slot_inputs():
    return {"q": _t(2, 4, 3, 8), "k": _t(2, 4, 3, 8), "v": _t(2, 4, 3, 8), "k_tok": _t(2, 5, 3, 8),
            "v_tok": _t(2, 5, 3, 8), "key_padding_mask": torch.ones(2, 5, dtype=torch.bool, device=DEVICE)}


def _norm_inputs():
    return {"m": _t(2, 3, 16), "bias": _t(3, 16)}


# (name, argument the message must name, override of the good inputs)
READ_TENSORS = [
    ("q-rank-3", "q", {"q": _t(2, 5, 24)}),
    ("k-rank-5", "k", {"k": _t(2, 4, 3, 8, 1)}),
    ("k-batch", "k", {"k": _t(3, 4, 3, 8)}),
    ("k-heads-not-dividing", "k", {"k": _t(2, 4, 2, 8), "v": _t(2, 4, 2, 8)}),
    ("v-heads-not-k-heads", "v", {"k": _t(2, 4, 1, 8)}),
    ("v-head-dim", "v", {"v": _t(2, 4, 3, 6)}),
    ("v-slots", "v", {"v": _t(2, 5, 3, 8)}),
    ("q-zero-tokens", "q", {"q": _t(2, 0, 3, 8)}),
    ("k-zero-slots", "k", {"k": _t(2, 0, 3, 8), "v": _t(2, 0, 3, 8)}),
    ("q-zero-batch", "q", {"q": _t(0, 5, 3, 8)}),
    ("q-zero-head-dim", "q", {"q": _t(2, 5, 3, 0)}),
    ("q-int", "q", {"q": _t(2, 5, 3, 8, dtype=torch.int64)}),
    ("k-other-dtype", "k", {"k": _t(2, 4, 3, 8, dtype=torch.float64)}),
    ("v-other-device", "v", {"v": _t(2, 4, 3, 8, device=OTHER_DEVICE)}),
    ("q-not-a-tensor", "q", {"q": [[1.0]]}),
]
SLOT_TENSORS = [
    ("q-rank-3", "q", {"q": _t(2, 4, 24)}),
    ("k-slots", "k", {"k": _t(2, 3, 3, 8)}),
    ("v-heads", "v", {"v": _t(2, 4, 2, 8)}),
    ("k_tok-grouped-heads", "k_tok", {"k_tok": _t(2, 5, 1, 8), "v_tok": _t(2, 5, 1, 8)}),
    ("k_tok-batch", "k_tok", {"k_tok": _t(3, 5, 3, 8)}),
    ("k_tok-head-dim", "k_tok", {"k_tok": _t(2, 5, 3, 4)}),
    ("v_tok-tokens", "v_tok", {"v_tok": _t(2, 6, 3, 8)}),
    ("k_tok-zero-tokens", "k_tok", {"k_tok": _t(2, 0, 3, 8), "v_tok": _t(2, 0, 3, 8),
                                    "key_padding_mask": torch.ones(2, 0, dtype=torch.bool, device=DEVICE)}),
    ("q-zero-slots", "q", {"q": _t(2, 0, 3, 8), "k": _t(2, 0, 3, 8), "v": _t(2, 0, 3, 8)}),
    ("v_tok-int", "v_tok", {"v_tok": _t(2, 5, 3, 8, dtype=torch.int32)}),
    ("k-other-dtype", "k", {"k": _t(2, 4, 3, 8, dtype=torch.float16)}),
    ("k_tok-other-device", "k_tok", {"k_tok": _t(2, 5, 3, 8, device=OTHER_DEVICE)}),
    ("mask-float", "key_padding_mask", {"key_padding_mask": torch.ones(2, 5, device=DEVICE)}),
    ("mask-shape", "key_padding_mask", {"key_padding_mask": torch.ones(2, 4, dtype=torch.bool, device=DEVICE)}),
    ("mask-rank-3", "key_padding_mask", {"key_padding_mask": torch.ones(2, 5, 1, dtype=torch.bool,
                                                                          device=DEVICE)}),
    ("mask-other-device", "key_padding_mask", {"key_padding_mask": torch.ones(2, 5, dtype=torch.bool,
                                                                                device=OTHER_DEVICE)}),
]
NORM_TENSORS = [
    ("m-rank-2", "m", {"m": _t(3, 16)}),
    ("bias-slots", "bias", {"bias": _t(4, 16)}),
    ("bias-width", "bias", {"bias": _t(3, 8)}),
    ("bias-rank-1", "bias", {"bias": _t(16)}),
    ("m-zero-batch", "m", {"m": _t(0, 3, 16)}),
    ("m-zero-width", "m", {"m": _t(2, 3, 0), "bias": _t(3, 0)}),
    ("m-int", "m", {"m": _t(2, 3, 16, dtype=torch.int32)}),
    ("bias-other-dtype", "bias", {"bias": _t(3, 16, dtype=torch.float64)}),
    ("bias-other-device", "bias", {"bias": _t(3, 16, device=OTHER_DEVICE)}),
]


def _public_cases():
    for backend in ("auto", *dispatch.BACKENDS):
        for name, arg, override in READ_TENSORS:
            yield f"memory_read[{backend}]-{name}", arg, lambda o=override, b=backend: memkernels.memory_read(
                **{**_read_inputs(), **o}, backend=b)
        for name, arg, override in SLOT_TENSORS:
            def call(o=override, b=backend):
                inputs = {**_slot_inputs(), **o}
                mask = inputs.pop("key_padding_mask")
                return memkernels.slot_attention(**inputs, key_padding_mask=mask, backend=b)
            yield f"slot_attention[{backend}]-{name}", arg, call
        for name, arg, override in NORM_TENSORS:
            yield f"memory_norm[{backend}]-{name}", arg, lambda o=override, b=backend: memkernels.memory_norm(
                **{**_norm_inputs(), **o}, backend=b)
    yield "memory_read-scale-nan", "scale", lambda: memkernels.memory_read(**_read_inputs(), scale=float("nan"))
    yield "slot_attention-tau-zero", "tau", lambda: memkernels.slot_attention(
        *list(_slot_inputs().values())[:5], tau=0.0)
    yield "slot_attention-tau-inf", "tau", lambda: memkernels.slot_attention(
        *list(_slot_inputs().values())[:5], tau=float("inf"))
    yield "memory_norm-eps-negative", "eps", lambda: memkernels.memory_norm(**_norm_inputs(), eps=-1.0)
    yield "memory_read-backend-unknown", "backend", lambda: memkernels.memory_read(**_read_inputs(), backend="fast")


def _registered_cases():
    """The ops anyone can call as torch.ops.memkernels.*, forward and backward, every backend."""
    for backend in dispatch.BACKENDS:
        for name, arg, override in READ_TENSORS:
            yield f"ops.memory_read[{backend}]-{name}", arg, lambda o=override, b=backend: _ops.memory_read(
                *{**_read_inputs(), **o}.values(), 0.5, b)
        for name, arg, override in SLOT_TENSORS:
            yield f"ops.slot_attention[{backend}]-{name}", arg, lambda o=override, b=backend: _ops.slot_attention(
                *{**_slot_inputs(), **o}.values(), 0.5, b)
        for name, arg, override in NORM_TENSORS:
            yield f"ops.memory_norm[{backend}]-{name}", arg, lambda o=override, b=backend: _ops.memory_norm(
                *{**_norm_inputs(), **o}.values(), 1e-12, b)
        yield from _backward_cases(backend)
    yield "ops.memory_read-scale-inf", "scale", lambda: _ops.memory_read(*_read_inputs().values(), float("inf"),
                                                                        "torch")
    yield "ops.memory_norm-eps-zero", "eps", lambda: _ops.memory_norm(*_norm_inputs().values(), 0.0, "torch")
    yield "ops.memory_read-backend-unknown", "backend", lambda: _ops.memory_read(*_read_inputs().values(), 0.5, "fast")


def _backward_cases(backend):
    read = _read_inputs()
    q = read["q"]
    good = {"dout": torch.randn_like(q), **read, "out": torch.randn_like(q), "lse": _t(2, 3, 5)}
    bad = [("dout-shape", "dout", {"dout": _t(2, 5, 3, 7)}), ("out-dtype", "out", {"out": q.half()}),
           ("lse-shape", "lse", {"lse": _t(2, 5, 3)}), ("lse-dtype", "lse", {"lse": _t(2, 3, 5).half()}),
           ("lse-other-device", "lse", {"lse": _t(2, 3, 5, device=OTHER_DEVICE)})]
    for name, arg, override in bad:
        yield f"ops.memory_read_backward[{backend}]-{name}", arg, lambda o=override, g=good: \
            _ops.memory_read_backward(*{**g, **o}.values(), 0.5, backend)
    slot = _slot_inputs()
    good = {"dout": torch.randn_like(slot["q"]), **slot, "out": torch.randn_like(slot["q"]), "lse": _t(2, 3, 4)}
    bad = [("dout-shape", "dout", {"dout": _t(2, 4, 3, 9)}), ("lse-shape", "lse", {"lse": _t(2, 4, 3)}),
           ("mask-shape", "key_padding_mask", {"key_padding_mask": torch.ones(1, 5, dtype=torch.bool,
                                                                                device=DEVICE)})]
    for name, arg, override in bad:
        yield f"ops.slot_attention_backward[{backend}]-{name}", arg, lambda o=override, g=good: \
            _ops.slot_attention_backward(*{**g, **o}.values(), 0.5, backend)
    norm = _norm_inputs()
    good = {"dout": torch.randn_like(norm["m"]), "out": torch.randn_like(norm["m"]), "norm": _t(2, 3)}
    bad = [("dout-shape", "dout", {"dout": _t(2, 3, 15)}), ("norm-shape", "norm", {"norm": _t(3, 2)}),
           ("norm-dtype", "norm", {"norm": _t(2, 3, dtype=torch.float64)}), ("out-rank", "out", {"out": _t(3, 16)})]
    for name, arg, override in bad:
        yield f"ops.memory_norm_backward[{backend}]-{name}", arg, lambda o=override, g=good: \
            _ops.memory_norm_backward(*{**g, **o}.values(), 1e-12, backend)


def cases():
    """[(id, argument the message must name, call)] in a fixed order."""
    return [*_public_cases(), *_registered_cases()]


def main(first: int) -> None:
    for index, (case_id, _, call) in enumerate(cases()):
        if index < first:
            continue
        print(json.dumps({"index": index, "id": case_id, "status": "start"}), flush=True)
        try:
            call()
            result = {"status": "returned"}
        except Exception as error:  # noqa: BLE001  (what was raised is the finding)
            result = {"status": "raised", "type": type(error).__name__, "message": str(error).split("\n")[0]}
        print(json.dumps({"index": index, "id": case_id, **result}), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
