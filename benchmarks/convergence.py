"""Training converges the same with every fused backend as with the reference, step by step.

    python -m benchmarks.convergence [--steps N] [--device cuda] [--dtype bfloat16] [--out DIR]

In the style of Liger-Kernel's convergence tests: a small Memformer is trained from the same
initial weights, on the same batches, with the same optimizer, once per fused backend that runs
here (Triton; the CUDA extension twice, its fast paths off and on; sdpa; any other backend
of `memkernels.dispatch.BACKENDS`) and once with the reference backend ("torch"). Only the backend
of the memory ops differs. Each sample is three segments, the third repeating the first, so the
loss can only fall all the way through the memory (the decoder sees one segment back, not two):
slot attention and memory_norm write it, memory_read reads it, and BPTT
(`memkernels.training.bptt`) carries the gradient back through all three.

A backend passes when at every step |loss - reference loss| <= atol + rtol * |reference loss|
(TOLERANCE, per dtype) and the reference's loss fell over the run, so that the check compares
training and not noise around a constant. In a low-precision dtype the reference is also
trained in float32; its largest distance from the low-precision reference, reported beside,
is what the dtype's own rounding does to this run.

On a GPU (`gpu_session.sh quick`): bfloat16, 100 steps, d_model 128, two heads of 64 (a head
dim the tensor-core kernels take), 64 slots, batch 16, segments of 64. On a CPU
(tests/test_convergence.py, in `make test`): float32 (the Triton interpreter has no bfloat16
arithmetic), a tiny model, two segments and two steps, every fused backend the CPU runs
(Triton under the interpreter, sdpa) beside the reference.
Writes convergence.json to --out and prints a table; exits with 1 if a backend fails.
"""
import argparse
import json
import math
import os
from dataclasses import asdict, dataclass, replace

import torch

from memkernels import dispatch
from memkernels.models import Memformer, memformer_mnist
from memkernels.models.segments import split_segments
from memkernels.training import bptt

from .fast_paths import fast_paths_on

REFERENCE = "torch"
FAST = "cuda-fast"  # the CUDA backend with its fast paths on


@dataclass(frozen=True)
class Setting:
    vocab_size: int = 64
    d_model: int = 128
    n_heads: int = 2
    n_slots: int = 64
    d_ff: int = 256
    n_encoder_layers: int = 2
    n_decoder_layers: int = 2
    batch: int = 16
    segment_len: int = 64
    segments: int = 3
    steps: int = 100
    lr: float = 1e-3


GPU = Setting()
TINY = Setting(vocab_size=13, d_model=16, n_heads=2, n_slots=4, d_ff=32, n_encoder_layers=1, n_decoder_layers=1,
               batch=2, segment_len=4, segments=2, steps=2, lr=1e-2)


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float

    def bound(self, reference: float) -> float:
        return self.atol + self.rtol * abs(reference)


# float32: summation order alone (a few ulps per op), amplified a little by a few optimizer steps.
# bfloat16: the loss comes from bfloat16 activations (relative rounding 2^-8 = 3.9e-3) that two
# backends round differently; over 100 AdamW steps the trajectories may drift apart by a few such
# roundings. A wrong kernel (a gradient off by a few percent) moves the loss by more within tens
# of steps. The first GPU run reports the margin (largest difference against its bound).
TOLERANCE = {torch.float32: Tolerance(atol=1e-5, rtol=1e-4), torch.bfloat16: Tolerance(atol=1e-2, rtol=1e-2),
             torch.float16: Tolerance(atol=5e-3, rtol=5e-3)}


def compare(reference: list, losses: list, tolerance: Tolerance) -> dict:
    """Step-by-step comparison of a run's losses with the reference's (NaN never passes)."""
    diffs = [abs(a - b) for a, b in zip(losses, reference)]
    diffs = [d if math.isfinite(d) else math.inf for d in diffs]
    failing = [step for step, (diff, ref) in enumerate(zip(diffs, reference)) if not diff <= tolerance.bound(ref)]
    if len(losses) != len(reference):
        failing.append(min(len(losses), len(reference)))
    worst = max(range(len(diffs)), key=diffs.__getitem__, default=None)
    return {"passed": not failing, "first_failing_step": failing[0] if failing else None,
            "max_abs_diff": diffs[worst] if diffs else math.inf, "worst_step": worst,
            "max_diff_over_bound": max((d / tolerance.bound(r) for d, r in zip(diffs, reference)), default=0.0)}


def trained(losses: list) -> bool:
    """The loss fell over the run: its last value below its first."""
    return len(losses) > 1 and losses[-1] < losses[0]


def batch(setting: Setting, step: int, device) -> torch.Tensor:
    """(B, S L + 1) tokens: a payload segment, S - 2 filler segments, the payload again (+ one target)."""
    generator = torch.Generator().manual_seed(1000 + step)
    shape = (setting.batch, setting.segment_len)
    payload = torch.randint(1, setting.vocab_size, shape, generator=generator)
    fillers = [torch.randint(1, setting.vocab_size, shape, generator=generator) for _ in range(setting.segments - 2)]
    return torch.cat([payload, *fillers, payload, payload[:, :1]], dim=1).to(device)


def fused_backends(device: torch.device, dtype: torch.dtype, head_dim: int) -> list[str]:
    """Every backend but the reference that runs one of the ops here, and the CUDA fast paths."""
    labels = []
    for backend in dispatch.BACKENDS:
        if backend != REFERENCE and any(dispatch.why_unavailable(backend, device, dtype, head_dim, op) is None
                                        for op in dispatch.OPS):
            labels += [backend, FAST] if backend == "cuda" else [backend]
    return labels


def train(setting: Setting, label: str, device: torch.device, dtype: torch.dtype) -> list[float]:
    """The loss of every step of one training run with the memory ops on backend `label`."""
    backend = "cuda" if label == FAST else label
    torch.manual_seed(0)
    cfg = memformer_mnist(vocab_size=setting.vocab_size, d_model=setting.d_model, n_heads=setting.n_heads,
                          n_slots=setting.n_slots, d_ff=setting.d_ff, n_encoder_layers=setting.n_encoder_layers,
                          n_decoder_layers=setting.n_decoder_layers, dropout=0.0, backend=backend)
    model = Memformer(cfg).to(device=device, dtype=dtype).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=setting.lr)
    losses = []
    for step in range(setting.steps):
        optimizer.zero_grad(set_to_none=True)
        segments = split_segments(batch(setting, step, device), setting.segment_len)
        loss, _ = bptt(model, segments, model.initial_state(setting.batch, setting.segment_len))
        optimizer.step()
        losses.append(loss)
    return losses


def _train_with_paths(setting, label, device, dtype) -> list[float]:
    if label != FAST:
        return train(setting, label, device, dtype)
    with fast_paths_on():
        return train(setting, label, device, dtype)


def run(setting: Setting, labels: list[str], device: torch.device, dtype: torch.dtype) -> dict:
    """Train the reference and every backend in `labels`; compare each with the reference."""
    tolerance = TOLERANCE[dtype]
    reference = train(setting, REFERENCE, device, dtype)
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "dtype": str(dtype).removeprefix("torch."), "setting": asdict(setting), "tolerance": asdict(tolerance),
              "reference": reference, "reference_trained": trained(reference), "backends": {}}
    if dtype != torch.float32:
        float32 = train(setting, REFERENCE, device, torch.float32)
        result["float32_reference_max_abs_diff"] = max(abs(a - b) for a, b in zip(float32, reference))
    for label in labels:
        try:
            losses = _train_with_paths(setting, label, device, dtype)
        except dispatch.BackendUnavailable as why:
            result["backends"][label] = {"passed": None, "skipped": str(why)}
            continue
        outcome = compare(reference, losses, tolerance)
        outcome["passed"] = outcome["passed"] and result["reference_trained"]
        result["backends"][label] = {**outcome, "losses": losses}
    result["passed"] = all(b["passed"] is not False for b in result["backends"].values())
    return result


def table(result: dict) -> str:
    tol = result["tolerance"]
    lines = [f"convergence on {result['device']}, {result['dtype']}, {result['setting']['steps']} steps: "
             f"|loss - reference| <= {tol['atol']:g} + {tol['rtol']:g} |reference| at every step; reference loss "
             f"{result['reference'][0]:.4f} -> {result['reference'][-1]:.4f}"
             + ("" if result["reference_trained"] else " (DID NOT FALL: nothing was compared)"),
             "| backend | result | max abs diff (step) | max diff / bound | first failing step | final loss |",
             "|---|---|---|---|---|---|"]
    if "float32_reference_max_abs_diff" in result:
        lines.insert(1, f"the float32 reference's largest distance from the {result['dtype']} reference: "
                        f"{result['float32_reference_max_abs_diff']:.3g}")
    for label, b in result["backends"].items():
        if b["passed"] is None:
            lines.append(f"| {label} | skipped: {b['skipped']} | - | - | - | - |")
            continue
        lines.append(f"| {label} | {'pass' if b['passed'] else 'FAIL'} | {b['max_abs_diff']:.3g} ({b['worst_step']}) "
                     f"| {b['max_diff_over_bound']:.2f} | {b['first_failing_step']} | {b['losses'][-1]:.4f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.convergence", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                        help="default: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--steps", type=int, help="default: 100 on cuda, 2 on cpu")
    parser.add_argument("--backends", nargs="+", help="default: every fused backend that runs here")
    parser.add_argument("--out", help="directory for convergence.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    setting = GPU if device.type == "cuda" else TINY
    setting = replace(setting, steps=args.steps or setting.steps)
    labels = args.backends or fused_backends(device, dtype, setting.d_model // setting.n_heads)
    result = run(setting, labels, device, dtype)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "convergence.json"), "w") as f:
            json.dump(result, f, indent=1)
    print(table(result))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
