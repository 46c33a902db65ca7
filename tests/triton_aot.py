"""Compile every Triton kernel variant the launchers produce for a real GPU, without one.

    python tests/triton_aot.py [--arch 90] [--report]

The launchers run as they would on a GPU (the same shapes, block sizes, dtypes, contiguous
and strided variants), but on CPU tensors and with Triton's driver replaced by one that names
an NVIDIA target: every launch compiles for that target (through ptxas) and returns instead
of running. The Triton interpreter cannot see a kernel that fails to lower for a GPU (an H100
found a float64 tl.dot that the interpreter ran happily); this does.

Prints one JSON line per compiled kernel: name, arch, dtype, block sizes, registers, spill
stores and loads as ptxas -v prints them, stack bytes, shared memory, and whether the PTX has
tensor-core MMAs. Exits non-zero if any launch fails to compile.
"""
import argparse
import json
import os
import sys

os.environ["TRITON_INTERPRET"] = "0"  # before triton decorates the kernels

import torch  # noqa: E402

from benchmarks import codegen  # noqa: E402  (its compile-only driver and ptxas -v log)
from memkernels.triton_kernels import memory_norm, memory_read, slot_attention  # noqa: E402

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

# (B, L, K, H, D) for the attention ops: head-dim buckets 16..256, K and L of 1 (Triton turns
# an integer argument equal to 1 into a constant), the paper's shape, more keys than a block.
ATTENTION_SHAPES = [(2, 13, 7, 2, 24), (16, 64, 64, 8, 64), (2, 64, 200, 2, 128), (1, 5, 33, 1, 256),
                    (2, 1, 1, 2, 8)]
# (B, K, W): one-pass rows, two-pass rows too wide for registers, dbias from partials, W = 1.
NORM_SHAPES = [(3, 5, 40), (16, 1024, 512), (2, 3, 20000), (256, 8, 64), (1, 1, 1)]


def _record(compiled) -> dict:
    ptx = compiled.kernel.asm["ptx"]
    return {"kernel": compiled.name, "arch": compiled.arch, "dtype": compiled.dtype,
            **{k: str(v) for k, v in compiled.constexprs.items()}, **codegen.ptxas_usage(compiled.ptxas_log),
            "shared_bytes": compiled.kernel.metadata.shared, "tensor_cores": "mma.sync" in ptx or "wgmma" in ptx}


def _rand(shape, dtype, transposed=False):
    if transposed:  # (B, X, H, D) over (B, H, X, D) storage
        b, x, h, d = shape
        return torch.randn(b, h, x, d).to(dtype).transpose(1, 2)
    return torch.randn(shape).to(dtype)


def _run_launchers(dtype):
    """Every launcher over every shape: contiguous inputs, and strided ones for the first shape."""
    for index, (B, L, K, H, D) in enumerate(ATTENTION_SHAPES):
        for transposed in (False, True) if index == 0 else (False,):
            q, dout = _rand((B, L, H, D), dtype, transposed), _rand((B, L, H, D), dtype, transposed)
            k, v = _rand((B, K, H, D), dtype, transposed), _rand((B, K, H, D), dtype)
            out, lse = memory_read.memory_read_forward(q, k, v, D ** -0.5)
            memory_read.memory_read_backward(dout, q, k, v, out, lse, D ** -0.5)
            # slot_attention: K slots over L tokens, with and without a padding mask.
            q_s, k_s, v_s = (_rand((B, K, H, D), dtype, transposed) for _ in range(3))
            k_tok, v_tok = _rand((B, L, H, D), dtype, transposed), _rand((B, L, H, D), dtype)
            for mask in (None, torch.ones(B, L, dtype=torch.bool)):
                out, lse = slot_attention.slot_attention_forward(q_s, k_s, v_s, k_tok, v_tok, mask, 0.5)
                slot_attention.slot_attention_backward(torch.ones_like(q_s), q_s, k_s, v_s, k_tok, v_tok, mask,
                                                       out, lse, 0.5)
    for index, (B, K, W) in enumerate(NORM_SHAPES):
        for strided in (False, True) if index == 0 else (False,):
            m = torch.randn(B, W, K).to(dtype).transpose(1, 2) if strided else torch.randn(B, K, W).to(dtype)
            out, norm = memory_norm.memory_norm_forward(m, torch.randn(K, W).to(dtype), 1e-12)
            memory_norm.memory_norm_backward(torch.ones_like(m), out, norm, 1e-12)


def compile_all(arch: int) -> tuple[list, list]:
    """(records, failures) for every launch at every dtype on sm_<arch>."""
    compiled, failures = [], []
    with codegen.compile_only(arch, compiled, failures):
        for dtype in DTYPES:
            _run_launchers(dtype)
    return [_record(c) for c in compiled], [{"kernel": name, "arch": arch, **{k: str(v) for k, v in c.items()},
                                             "error": error} for name, c, error in failures]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, action="append", help="compute capability x10 (default: 80 and 90)")
    args = parser.parse_args(argv)
    failed = False
    for arch in args.arch or (80, 90):
        records, failures = compile_all(arch)
        unique = {json.dumps(r, sort_keys=True) for r in records}
        for line in sorted(unique):
            print(line)
        for failure in failures:
            print(json.dumps({"failed": True, **failure}))
        failed |= bool(failures)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
