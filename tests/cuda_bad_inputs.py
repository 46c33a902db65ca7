"""Malformed inputs for the CUDA extension's registered ops, and a runner that survives a crash.

    python tests/cuda_bad_inputs.py [FIRST_CASE_INDEX]

Each case calls one op `torch.ops.memkernels.<op>_cuda_<direction>` with one malformed
argument and prints a JSON line when it starts and one with what it raised. A case that kills
the process leaves its "start" line last: tests/test_cuda_bad_inputs.py reports it as that
case's failure and runs the rest in a fresh process from the next index.

The ops check every argument before they ask for CUDA tensors, so on a machine without a GPU
the same table runs on CPU tensors and reaches every check; on a GPU it runs on CUDA tensors.
"""
import json
import sys

import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
B, L, K, H, D, W = 2, 5, 4, 3, 8, 16


def _t(*shape, dtype=torch.float32, device=None):
    device = DEVICE if device is None else device
    if dtype.is_floating_point:
        return torch.randn(*shape, dtype=dtype, device=device)
    return torch.zeros(*shape, dtype=dtype, device=device)


def _mask(*shape, dtype=torch.bool):
    return torch.ones(*shape, dtype=dtype, device=DEVICE)


def _read():
    return {"q": _t(B, L, H, D), "k": _t(B, K, H, D), "v": _t(B, K, H, D)}


def _slot():
    return {"q": _t(B, K, H, D), "k": _t(B, K, H, D), "v": _t(B, K, H, D), "k_tok": _t(B, L, H, D),
            "v_tok": _t(B, L, H, D), "key_padding_mask": _mask(B, L)}


def _norm():
    return {"m": _t(B, K, W), "bias": _t(K, W)}


def _attention_tensor_cases(good, layouts):
    """Wrong rank, each mismatched size, each zero-sized dim, wrong dtypes, for every tensor."""
    cases = []
    for name, layout in layouts.items():
        shape = tuple(good[name].shape)
        cases.append((f"{name}-rank-{len(shape) - 1}", name, {name: _t(*shape[:-1])}))
        cases.append((f"{name}-rank-{len(shape) + 1}", name, {name: _t(*shape, 1)}))
        for dim, letter in enumerate(layout):
            others = [n for n, lay in layouts.items() if n != name and letter in lay]
            if others:  # a size no other tensor has cannot mismatch
                bigger = list(shape)
                bigger[dim] += 1
                # the first tensor fixes every size: a mismatch in it is blamed on the next one
                blamed = others[0] if name == next(iter(layouts)) else name
                cases.append((f"{name}-{letter}-mismatch", blamed, {name: _t(*bigger)}))
            empty = list(shape)
            empty[dim] = 0
            cases.append((f"{name}-{letter}-zero", name, {name: _t(*empty)}))
        cases.append((f"{name}-float64", name, {name: good[name].double()}))
        cases.append((f"{name}-int64", name, {name: _t(*shape, dtype=torch.int64)}))
        if name != next(iter(layouts)):
            cases.append((f"{name}-other-dtype", name, {name: good[name].half()}))
    return cases


READ_LAYOUTS = {"q": "BLHD", "k": "BKHD", "v": "BKHD"}
SLOT_LAYOUTS = {"q": "BKHD", "k": "BKHD", "v": "BKHD", "k_tok": "BLHD", "v_tok": "BLHD"}


def _forward_cases():
    ops = torch.ops.memkernels
    read_cases = _attention_tensor_cases(_read(), READ_LAYOUTS) + [
        # the H100 segfault: k with the head count of q[:, :, :1]
        ("k-heads-as-sliced", "k", {"k": _read()["q"][:, :K, :1]}),
        ("q-head-dim-300", "q", {"q": _t(B, L, H, 300), "k": _t(B, K, H, 300), "v": _t(B, K, H, 300)}),
        ("scale-nan", "scale", {"scale": float("nan")}),
        ("scale-inf", "scale", {"scale": float("inf")}),
    ]
    for case_id, arg, override in read_cases:
        def call(o=override):
            inputs = {**_read(), "scale": 0.5, **o}
            return ops.memory_read_cuda_forward(**inputs)
        yield f"memory_read_cuda_forward-{case_id}", arg, call

    slot_cases = _attention_tensor_cases(_slot(), SLOT_LAYOUTS) + [
        ("mask-float", "key_padding_mask", {"key_padding_mask": _mask(B, L, dtype=torch.float32)}),
        ("mask-uint8", "key_padding_mask", {"key_padding_mask": _mask(B, L, dtype=torch.uint8)}),
        ("mask-batch", "key_padding_mask", {"key_padding_mask": _mask(B + 1, L)}),
        ("mask-tokens", "key_padding_mask", {"key_padding_mask": _mask(B, L - 1)}),
        ("mask-rank-3", "key_padding_mask", {"key_padding_mask": _mask(B, L, 1)}),
        ("mask-rank-1", "key_padding_mask", {"key_padding_mask": _mask(L)}),
        ("scale-nan", "scale", {"scale": float("nan")}),
    ]
    for case_id, arg, override in slot_cases:
        def call(o=override):
            inputs = {**_slot(), "scale": 0.5, **o}
            return ops.slot_attention_cuda_forward(**inputs)
        yield f"slot_attention_cuda_forward-{case_id}", arg, call

    norm_cases = [
        ("m-rank-2", "m", {"m": _t(K, W)}),
        ("m-rank-4", "m", {"m": _t(B, K, W, 1)}),
        ("bias-rank-1", "bias", {"bias": _t(W)}),
        ("bias-rank-3", "bias", {"bias": _t(1, K, W)}),
        ("bias-slots", "bias", {"bias": _t(K + 1, W)}),
        ("bias-width", "bias", {"bias": _t(K, W - 1)}),
        ("bias-transposed", "bias", {"bias": _t(W, K)}),
        ("m-zero-batch", "m", {"m": _t(0, K, W)}),
        ("m-zero-slots", "m", {"m": _t(B, 0, W), "bias": _t(0, W)}),
        ("m-zero-width", "m", {"m": _t(B, K, 0), "bias": _t(K, 0)}),
        ("m-float64", "m", {"m": _t(B, K, W, dtype=torch.float64), "bias": _t(K, W, dtype=torch.float64)}),
        ("m-int32", "m", {"m": _t(B, K, W, dtype=torch.int32)}),
        ("bias-other-dtype", "bias", {"bias": _t(K, W, dtype=torch.bfloat16)}),
        ("eps-zero", "eps", {"eps": 0.0}),
        ("eps-negative", "eps", {"eps": -1.0}),
        ("eps-nan", "eps", {"eps": float("nan")}),
    ]
    for case_id, arg, override in norm_cases:
        def call(o=override):
            inputs = {**_norm(), "eps": 1e-12, **o}
            return ops.memory_norm_cuda_forward(**inputs)
        yield f"memory_norm_cuda_forward-{case_id}", arg, call


def _backward_cases():
    ops = torch.ops.memkernels
    read = _read()
    read_good = {"dout": _t(B, L, H, D), **read, "out": _t(B, L, H, D), "lse": _t(B, H, L), "scale": 0.5}
    read_bad = [
        ("q-heads", "k", {"q": _t(B, L, H + 1, D)}),
        ("k-head-dim", "k", {"k": _t(B, K, H, D + 8)}),
        ("dout-shape", "dout", {"dout": _t(B, L, H, D - 1)}),
        ("dout-rank", "dout", {"dout": _t(B, L, H * D)}),
        ("dout-dtype", "dout", {"dout": _t(B, L, H, D, dtype=torch.float16)}),
        ("out-shape", "out", {"out": _t(B, L + 1, H, D)}),
        ("out-dtype", "out", {"out": _t(B, L, H, D, dtype=torch.bfloat16)}),
        ("lse-shape", "lse", {"lse": _t(B, L, H)}),
        ("lse-rank", "lse", {"lse": _t(B, H, L, 1)}),
        ("lse-dtype", "lse", {"lse": _t(B, H, L, dtype=torch.float16)}),
        ("lse-float64", "lse", {"lse": _t(B, H, L, dtype=torch.float64)}),
        ("scale-nan", "scale", {"scale": float("nan")}),
    ]
    for case_id, arg, override in read_bad:
        def call(o=override):
            return ops.memory_read_cuda_backward(**{**read_good, **o})
        yield f"memory_read_cuda_backward-{case_id}", arg, call

    slot = _slot()
    slot_good = {"dout": _t(B, K, H, D), **slot, "out": _t(B, K, H, D), "lse": _t(B, H, K), "scale": 0.5}
    slot_bad = [
        ("k_tok-heads", "k_tok", {"k_tok": _t(B, L, H - 1, D)}),
        ("v_tok-tokens", "v_tok", {"v_tok": _t(B, L + 1, H, D)}),
        ("dout-shape", "dout", {"dout": _t(B, K, H, D + 1)}),
        ("out-dtype", "out", {"out": _t(B, K, H, D, dtype=torch.float16)}),
        ("lse-shape", "lse", {"lse": _t(B, H, L)}),
        ("lse-dtype", "lse", {"lse": _t(B, H, K, dtype=torch.bfloat16)}),
        ("mask-shape", "key_padding_mask", {"key_padding_mask": _mask(B, K)}),
        ("mask-dtype", "key_padding_mask", {"key_padding_mask": _mask(B, L, dtype=torch.int32)}),
        ("scale-inf", "scale", {"scale": float("-inf")}),
    ]
    for case_id, arg, override in slot_bad:
        def call(o=override):
            return ops.slot_attention_cuda_backward(**{**slot_good, **o})
        yield f"slot_attention_cuda_backward-{case_id}", arg, call

    norm_good = {"dout": _t(B, K, W), "out": _t(B, K, W), "norm": _t(B, K), "eps": 1e-12}
    norm_bad = [
        ("out-rank", "out", {"out": _t(K, W)}),
        ("out-zero-width", "out", {"out": _t(B, K, 0), "dout": _t(B, K, 0)}),
        ("out-float64", "out", {"out": _t(B, K, W, dtype=torch.float64)}),
        ("dout-shape", "dout", {"dout": _t(B, K, W + 1)}),
        ("dout-dtype", "dout", {"dout": _t(B, K, W, dtype=torch.float16)}),
        ("norm-shape", "norm", {"norm": _t(K, B)}),
        ("norm-rank", "norm", {"norm": _t(B, K, 1)}),
        ("norm-dtype", "norm", {"norm": _t(B, K, dtype=torch.float64)}),
        ("eps-zero", "eps", {"eps": 0.0}),
    ]
    for case_id, arg, override in norm_bad:
        def call(o=override):
            return ops.memory_norm_cuda_backward(**{**norm_good, **o})
        yield f"memory_norm_cuda_backward-{case_id}", arg, call


def _device_cases():
    """Well-formed inputs off the GPU: refused last, naming the first CPU tensor."""
    ops = torch.ops.memkernels
    if DEVICE.type == "cuda":
        cpu = torch.device("cpu")
        yield "memory_read_cuda_forward-v-on-cpu", "v", lambda: ops.memory_read_cuda_forward(
            **{**_read(), "v": _t(B, K, H, D, device=cpu)}, scale=0.5)
        yield "slot_attention_cuda_forward-mask-on-cpu", "key_padding_mask", \
            lambda: ops.slot_attention_cuda_forward(
                **{**_slot(), "key_padding_mask": torch.ones(B, L, dtype=torch.bool)}, scale=0.5)
        yield "memory_norm_cuda_forward-bias-on-cpu", "bias", lambda: ops.memory_norm_cuda_forward(
            _t(B, K, W), _t(K, W, device=cpu), 1e-12)
        return
    yield "memory_read_cuda_forward-cpu", "q", lambda: ops.memory_read_cuda_forward(**_read(), scale=0.5)
    yield "slot_attention_cuda_forward-cpu", "q", lambda: ops.slot_attention_cuda_forward(**_slot(), scale=0.5)
    yield "memory_norm_cuda_forward-cpu", "m", lambda: ops.memory_norm_cuda_forward(**_norm(), eps=1e-12)
    yield "memory_norm_cuda_backward-cpu", "dout", lambda: ops.memory_norm_cuda_backward(
        _t(B, K, W), _t(B, K, W), _t(B, K), 1e-12)


def cases():
    """[(id, argument the message must name, call)] in a fixed order."""
    return [*_forward_cases(), *_backward_cases(), *_device_cases()]


def main(first: int) -> None:
    import memkernels._C  # noqa: F401  (registers the ops)

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
