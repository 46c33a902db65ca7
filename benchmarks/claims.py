"""Reproduce the paper's efficiency claims side by side, in one run, at steady state.

    python -m benchmarks.claims [--quick] [--device cuda] [--dtype bfloat16] [--out DIR] [--profile]
                                [--memory-sizes N ...] [--speed-memories N ...] [--horizons N ...]

Both models get the same engineering: the same dtype; the same head, the
adaptive softmax of Transformer-XL's WikiText-103 recipe (cutoffs 20k/40k/200k,
tied), scoring Zipf-distributed targets (`zipf_tokens`) so its tail clusters see
text-like traffic; the body of every segment run through `StreamingRunner`
(captured once in a CUDA graph on CUDA, eager elsewhere). Transformer-XL runs
with its fixed-size cache (`fixed_cache=True`): mem_len positions from the
first segment, so every segment costs what a full cache costs.

1. Memory (Figure 5 right), batch 16, segments of 64, memory 64..2048 (TXL
   cached states per layer, Memformer slots): a stream of ceil(max memory /
   segment) + 4 segments, peak statistics reset once the caches are full, and
   per size: the carried state's bytes (checked against its formula), the
   steady-state peak beyond the weights, and the total peak (weights included).
   Measured on eager steps: a graph's replay allocates nothing the allocator
   sees (benchmarks/memory_meter.py).
2. Speed (Table 2): tokens/s with and without the head, TXL at memory
   128..2048 against Memformer at 1024 slots (the paper's layout) and at equal
   memory; beside each speed ratio the FLOP ratio, against the cached TXL that
   was timed and against a TXL that recomputes every position of
   [memory; segment] through every layer (what the paper's 168 GFLOPs fits).
   FLOPs per sample at the measured batch, counted on the meta device with
   FlopCounterMode (attention through its math path, whose matmuls it counts;
   the memory ops have registered formulas).
3. MRBP (Table 3): peak training memory (total and beyond the weights) and
   speed of BPTT, gradient checkpointing and MRBP on the paper's setting
   (12-layer decoder, 8 heads, d 512, 32 slots, segments of 64), horizons 4 and 16.

Memformer runs with the fused backend ("auto") and the reference backend
("torch") where a fused one exists, so the kernels' own contribution shows.
`--quick` shrinks the models and sizes (same method, same keys) to run in well
under a minute on a CPU: its numbers check the method, not the paper's setting.
`--memory-sizes`, `--speed-memories` (TXL's; Memformer's slots must be among them) and
`--horizons` keep the models and measure fewer points, as `gpu_session.sh quick` does
(memory 1024 and 2048, speed at 1024, MRBP at horizon 4); without horizon 16 the MRBP
growth from horizon 4 to 16 is not measured (None).
Writes claims.json, claims.md and three PNG plots to --out, tagged with
device, versions, date and git commit (benchmarks/claims_report.py).
"""
import argparse
import dataclasses
import functools
import itertools
import json
import math
import os
import platform
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import memkernels
from memkernels import dispatch
from memkernels.models import (
    WT103_CUTOFFS,
    Memformer,
    StreamingRunner,
    TransformerXL,
    TransformerXLState,
    memformer_wt103,
    txl_wt103_base,
    zipf_tokens,
)
from memkernels.training import bptt, checkpointed_bptt, mrbp, split_segments

from .claims_report import PAPER, plots, report_markdown
from .memory_meter import PeakMeter, peak_bytes

STEADY_SEGMENTS = 4   # segments measured after the caches are full
TIMING_REPEATS = 3


@dataclass(frozen=True)
class Setting:
    memory_sizes: tuple = (64, 128, 256, 512, 1024, 2048)
    batch: int = 16
    segment_len: int = 64
    speed_memory: int = 1024                                      # Memformer's slots in Table 2
    txl_speed_memories: tuple = (128, 256, 512, 1024, 1600, 2048)
    speed_segments: int = 8                                       # timed segments per run
    vocab_size: int = 267_735
    cutoffs: tuple = WT103_CUTOFFS
    zipf_exponent: float = 1.0
    layers: dict = field(default_factory=dict)  # size overrides for both inference models ({}: the paper's)
    txl_layers: int = 16
    memformer_layers: tuple = (4, 16)           # (encoder, decoder)
    mrbp_batch: int = 16
    mrbp_horizons: tuple = (4, 16)
    mrbp_model: dict = field(default_factory=lambda: dict(
        n_encoder_layers=4, n_decoder_layers=12, d_model=512, n_heads=8, n_slots=32))


FULL = Setting()
QUICK = Setting(
    memory_sizes=(32, 64, 128, 256), batch=4, segment_len=16, speed_memory=64, txl_speed_memories=(32, 64, 128),
    speed_segments=4, vocab_size=2000, cutoffs=(200, 400, 1200), layers=dict(d_model=64, n_heads=4, d_ff=128),
    txl_layers=4, memformer_layers=(1, 4), mrbp_batch=2,
    mrbp_model=dict(n_encoder_layers=1, n_decoder_layers=3, d_model=64, n_heads=4, n_slots=8, d_ff=128),
)


def build_memformer(setting, slots, backend, device, dtype):
    encoder, decoder = setting.memformer_layers
    cfg = memformer_wt103(vocab_size=setting.vocab_size, cutoffs=setting.cutoffs, n_slots=slots, backend=backend,
                          dropout=0.0, n_encoder_layers=encoder, n_decoder_layers=decoder, **setting.layers)
    with torch.device(device):  # built where it runs: no host copy of a 267k-word embedding
        return Memformer(cfg).to(dtype).eval()


def build_txl(setting, mem_len, device, dtype):
    head_dim = dict(d_head=setting.layers["d_model"] // setting.layers["n_heads"]) if setting.layers else {}
    cfg = txl_wt103_base(vocab_size=setting.vocab_size, cutoffs=setting.cutoffs, mem_len=mem_len, dropout=0.0,
                         fixed_cache=True, n_layers=setting.txl_layers, **setting.layers, **head_dim)
    with torch.device(device):
        return TransformerXL(cfg).to(dtype).eval()


def zipf_segments(setting, n_segments, batch, device, seed):
    """n_segments language-model segments of a Zipf token stream (inputs and next-token targets)."""
    generator = torch.Generator().manual_seed(seed)
    stream = zipf_tokens((batch, n_segments * setting.segment_len + 1), setting.vocab_size, setting.zipf_exponent,
                         generator=generator, device=device)
    return split_segments(stream, setting.segment_len)


def weight_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in itertools.chain(model.parameters(), model.buffers()))


def state_bytes(state) -> int:
    """Bytes the carried state holds: its tensors' storages, each once."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in state}
    return sum(storages.values())


def state_formula_bytes(model, batch, segment_len, element_size) -> int:
    """TXL: n_layers x mem_len x d x B (+ a bool mask per cached position); Memformer: K x d x B slots
    plus one segment of encoder output as context (+ its bool mask)."""
    cfg = model.cfg
    if isinstance(model, TransformerXL):
        return cfg.n_layers * cfg.mem_len * cfg.d_model * batch * element_size + batch * cfg.mem_len
    return (cfg.n_slots + segment_len) * cfg.d_model * batch * element_size + batch * segment_len


def best_seconds(fn, device, repeats=TIMING_REPEATS) -> float:
    """Fastest of `repeats` synchronised wall-clock runs of fn()."""
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - started)
    return best


def stream(runner, model, segments, counts, with_head):
    """One call of the runner per segment, then (with_head) the head's log-likelihood of the targets."""
    for seg, seg_counts in zip(segments, counts):
        with torch.profiler.record_function(f"{type(model).__name__}.segment"):
            hidden = runner(seg.inputs)
            if with_head:
                model.head.log_prob(hidden, seg.targets, seg_counts)


@torch.no_grad()
def steady_state_memory(model, setting, segments, counts, device, dtype) -> dict:
    """Stream `segments` (the caches fill), reset the peak, measure the last STEADY_SEGMENTS."""
    with PeakMeter(device) as meter:
        runner = StreamingRunner(model, setting.batch, setting.segment_len, output="hidden", graphs=False)
        fill = len(segments) - STEADY_SEGMENTS
        stream(runner, model, segments[:fill], counts[:fill], with_head=True)
        meter.reset_peak()
        stream(runner, model, segments[fill:], counts[fill:], with_head=True)
    weights = weight_bytes(model)
    element_size = torch.empty((), dtype=dtype).element_size()
    return {"state_bytes": state_bytes(runner.state),
            "state_formula_bytes": state_formula_bytes(model, setting.batch, setting.segment_len, element_size),
            "peak_minus_weights_bytes": meter.peak, "peak_bytes": meter.peak + weights, "weight_bytes": weights}


def memory_scaling(setting, device, dtype, backends, progress):
    n_segments = math.ceil(max(setting.memory_sizes) / setting.segment_len) + STEADY_SEGMENTS
    segments = zipf_segments(setting, n_segments, setting.batch, device, seed=1)
    rows, counts = [], None
    for size in setting.memory_sizes:
        models = {"txl": build_txl(setting, size, device, dtype)}
        models.update({f"memformer_{label}": build_memformer(setting, size, backend, device, dtype)
                       for label, backend in backends.items()})
        counts = counts or models["txl"].head.target_counts(torch.stack([s.targets for s in segments]))
        row = {"memory_size": size, "segments": n_segments}
        for name, model in models.items():
            measured = steady_state_memory(model, setting, segments, counts, device, dtype)
            row.update({f"{name}_{key}": value for key, value in measured.items()})
            progress.update(1)
        rows.append(row)
    return rows


@torch.no_grad()
def tokens_per_second(model, setting, segments, counts, device) -> dict:
    """Tokens/s through a StreamingRunner (graphed on CUDA), with and without the head."""
    runner = StreamingRunner(model, setting.batch, setting.segment_len, output="hidden")
    result = {}
    for with_head, key in ((True, "tokens_per_s"), (False, "tokens_per_s_no_head")):
        run = functools.partial(stream, runner, model, segments, counts, with_head)
        run()  # warm-up
        result[key] = setting.batch * setting.segment_len * len(segments) / best_seconds(run, device)
    return result


@contextmanager
def flop_counter():
    """FlopCounterMode with attention through its math path: the counter has formulas for the GPU's
    fused attention kernels but not for the CPU's, and the math path's matmuls it counts everywhere."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        yield counter


@torch.no_grad()
def gflops_per_sample(model, setting, counts, recompute_memory: int = 0) -> dict:
    """Forward GFLOPs per sample of one segment, without and with the head, on a meta-device model.

    recompute_memory > 0 (TXL): no cache; the segment and the `recompute_memory` positions before
    it all go through every layer, the head scoring the segment only.
    """
    batch, length = setting.batch, setting.segment_len
    state = model.initial_state(batch, length)
    if recompute_memory:
        state = TransformerXLState(state.memories[:, :, :0], state.mask[:, :0])
    state = type(state)(*(t.detach() for t in state))  # the start context is a view of a parameter
    tokens = torch.zeros(batch, recompute_memory + length, dtype=torch.long, device="meta")
    targets = torch.zeros(batch, length, dtype=torch.long, device="meta")
    with flop_counter() as counter:
        hidden, _ = model.body(tokens, state)
        body = counter.get_total_flops()
        model.head.log_prob(hidden[:, -length:], targets, counts)
    return {"gflops_no_head": body / batch / 1e9, "gflops": counter.get_total_flops() / batch / 1e9}


def speed(setting, device, dtype, backends, progress):
    segments = zipf_segments(setting, setting.speed_segments, setting.batch, device, seed=2)
    meta = torch.device("meta")
    fused = next(iter(backends))
    memformer, counts = {}, None
    for label, backend in backends.items():
        model = build_memformer(setting, setting.speed_memory, backend, device, dtype)
        counts = counts or model.head.target_counts(torch.stack([s.targets for s in segments]))
        memformer[label] = tokens_per_second(model, setting, segments, counts, device)
        progress.update(1)
    # The head's FLOPs depend on the targets' clusters: counted on the first segment's.
    flop_counts = counts[0]
    memformer.update(gflops_per_sample(build_memformer(setting, setting.speed_memory, "auto", meta, dtype),
                                       setting, flop_counts))
    rows = []
    for size in setting.txl_speed_memories:
        txl = build_txl(setting, size, device, dtype)
        row = {"txl_memory": size, **{f"txl_{k}": v for k, v in
                                      tokens_per_second(txl, setting, segments, counts, device).items()}}
        meta_txl = build_txl(setting, size, meta, dtype)
        row.update({f"txl_{k}": v for k, v in gflops_per_sample(meta_txl, setting, flop_counts).items()})
        row.update({f"txl_recompute_{k}": v
                    for k, v in gflops_per_sample(meta_txl, setting, flop_counts, recompute_memory=size).items()})
        progress.update(1)
        equal = build_memformer(setting, size, backends[fused], device, dtype)
        row.update({f"memformer_equal_{k}": v for k, v in
                    tokens_per_second(equal, setting, segments, counts, device).items()})
        row.update({f"memformer_equal_{k}": v for k, v in gflops_per_sample(
            build_memformer(setting, size, "auto", meta, dtype), setting, flop_counts).items()})
        progress.update(1)
        rows.append(row)
    return {"memformer_memory": setting.speed_memory, "memformer": memformer, "rows": rows,
            "graphed": device.type == "cuda", "head_counts_for_flops": list(flop_counts)}


def training_step(model, scheme, segments, setting):
    model.zero_grad(set_to_none=True)
    scheme(model, segments, model.initial_state(setting.mrbp_batch, setting.segment_len))


def mrbp_table(setting, device, dtype, backends, progress):
    rows = {}
    for label, backend in backends.items():
        torch.manual_seed(0)
        with torch.device(device):
            model = Memformer(memformer_wt103(vocab_size=setting.vocab_size, cutoffs=setting.cutoffs, backend=backend,
                                              **setting.mrbp_model)).to(dtype).train()
        weights = weight_bytes(model)
        for horizon in setting.mrbp_horizons:
            segments = zipf_segments(setting, horizon, setting.mrbp_batch, device, seed=3)
            for scheme in (bptt, checkpointed_bptt, mrbp):
                train_step = functools.partial(training_step, model, scheme, segments, setting)
                train_step()  # warm-up
                peak, _ = peak_bytes(train_step, device)
                rows[f"{label}/{scheme.__name__}/h{horizon}"] = {
                    "backend": label, "scheme": scheme.__name__, "horizon": horizon,
                    "peak_minus_weights_bytes": peak, "peak_bytes": peak + weights, "weight_bytes": weights,
                    "seconds_per_step": best_seconds(train_step, device)}
                progress.update(1)
    return rows


def summarise(memory_rows, speed_result, mrbp_rows, backends) -> dict:
    fused = next(iter(backends))
    largest = memory_rows[-1]
    memformer = f"memformer_{fused}"
    at = next(r for r in speed_result["rows"] if r["txl_memory"] == speed_result["memformer_memory"])
    mf = speed_result["memformer"]
    h4, h16 = min(r["horizon"] for r in mrbp_rows.values()), max(r["horizon"] for r in mrbp_rows.values())
    train = {name: row for name, row in mrbp_rows.items() if row["backend"] == fused}

    def row(scheme, horizon):
        return train[f"{fused}/{scheme}/h{horizon}"]

    base = row("bptt", h4)
    delta = row("mrbp", h16)["peak_bytes"] - row("mrbp", h4)["peak_bytes"] if h16 == 16 else None
    return {
        "memory_ratio_at_max": largest["txl_peak_bytes"] / largest[f"{memformer}_peak_bytes"],
        "memory_minus_weights_ratio_at_max":
            largest["txl_peak_minus_weights_bytes"] / largest[f"{memformer}_peak_minus_weights_bytes"],
        "state_ratio_at_max": largest["txl_state_bytes"] / largest[f"{memformer}_state_bytes"],
        "state_formula_ratio_at_max": largest["txl_state_formula_bytes"] / largest[f"{memformer}_state_formula_bytes"],
        "speed_ratio": mf[fused]["tokens_per_s"] / at["txl_tokens_per_s"],
        "speed_ratio_no_head": mf[fused]["tokens_per_s_no_head"] / at["txl_tokens_per_s_no_head"],
        "memformer_gflops": mf["gflops"],
        "txl_gflops": at["txl_gflops"],
        "txl_recompute_gflops": at["txl_recompute_gflops"],
        "flop_ratio": at["txl_gflops"] / mf["gflops"],
        "flop_ratio_no_head": at["txl_gflops_no_head"] / mf["gflops_no_head"],
        "flop_ratio_recompute_txl": at["txl_recompute_gflops"] / mf["gflops"],
        "flop_ratio_recompute_txl_no_head": at["txl_recompute_gflops_no_head"] / mf["gflops_no_head"],
        "mrbp_memory_ratio": row("mrbp", h4)["peak_bytes"] / base["peak_bytes"],
        "mrbp_memory_ratio_minus_weights":
            row("mrbp", h4)["peak_minus_weights_bytes"] / base["peak_minus_weights_bytes"],
        "mrbp_speed": base["seconds_per_step"] / row("mrbp", h4)["seconds_per_step"],
        "checkpoint_memory_ratio": row("checkpointed_bptt", h4)["peak_bytes"] / base["peak_bytes"],
        "checkpoint_speed": base["seconds_per_step"] / row("checkpointed_bptt", h4)["seconds_per_step"],
        "mrbp_memory_delta_horizon16_bytes": delta,
    }


def fewer_points(setting, memory_sizes=None, speed_memories=None, horizons=None) -> Setting:
    """`setting` measured at fewer memory sizes, TXL speed memories or MRBP horizons."""
    changes = {"memory_sizes": memory_sizes, "txl_speed_memories": speed_memories, "mrbp_horizons": horizons}
    reduced = dataclasses.replace(setting, **{k: tuple(v) for k, v in changes.items() if v})
    if reduced.speed_memory not in reduced.txl_speed_memories:
        raise ValueError(f"--speed-memories must include Memformer's {reduced.speed_memory} slots "
                         f"(the speed ratio compares them), got {list(reduced.txl_speed_memories)}")
    if min(reduced.mrbp_horizons) != 4:
        raise ValueError(f"--horizons must include 4 (the ratios are taken there), got {list(reduced.mrbp_horizons)}")
    return reduced


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def describe(device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or 'x86_64'})"
    triton_version = None
    if dispatch.triton_import_error() is None:
        import triton

        triton_version = triton.__version__
    return {"device": name, "torch": torch.__version__, "triton": triton_version, "cuda": torch.version.cuda,
            "memkernels": memkernels.__version__, "git_commit": git_commit(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _progress(total):
    """tqdm's bar where tqdm is installed; otherwise a line per finished measurement."""
    try:
        from tqdm import tqdm
    except ImportError:
        class Lines:
            done = 0

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return None

            def update(self, n):
                self.done += n
                print(f"claims: {self.done}/{total} measurements done", flush=True)
        return Lines()
    return tqdm(total=total, desc="claims", unit="measurement")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.claims", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="device to measure on (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="model dtype (default: bfloat16 on cuda, float32 on cpu)")
    parser.add_argument("--quick", action="store_true",
                        help="small models and sizes, same method: well under a minute on a CPU")
    parser.add_argument("--out", default="benchmarks/results/local", help="directory for claims.json/.md and plots")
    parser.add_argument("--profile", action="store_true",
                        help="also write a torch.profiler trace (trace.json, open in Perfetto or chrome://tracing)")
    parser.add_argument("--memory-sizes", type=int, nargs="+", help="memory sizes of the memory claim")
    parser.add_argument("--speed-memories", type=int, nargs="+",
                        help="TXL memories of the speed claim (must include Memformer's slots, 1024)")
    parser.add_argument("--horizons", type=int, nargs="+", help="MRBP horizons (must include 4)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    try:
        setting = fewer_points(QUICK if args.quick else FULL, args.memory_sizes, args.speed_memories, args.horizons)
    except ValueError as error:
        parser.error(str(error))
    fused = dispatch.select("memory_read", "auto", device, dtype)
    backends = {"fused": "auto", "reference": "torch"} if fused != "torch" else {"reference": "torch"}
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)

    steps = (len(setting.memory_sizes) * (1 + len(backends)) + len(backends) + 2 * len(setting.txl_speed_memories)
             + 3 * len(backends) * len(setting.mrbp_horizons))
    profiler = torch.profiler.profile(record_shapes=False) if args.profile else None
    with _progress(steps) as progress:
        if profiler is not None:
            profiler.__enter__()
        memory_rows = memory_scaling(setting, device, dtype, backends, progress)
        speed_result = speed(setting, device, dtype, backends, progress)
        mrbp_rows = mrbp_table(setting, device, dtype, backends, progress)
        if profiler is not None:
            profiler.__exit__(None, None, None)
            profiler.export_chrome_trace(os.path.join(args.out, "trace.json"))

    result = {
        **describe(device), "dtype": str(dtype).removeprefix("torch."), "quick": args.quick,
        "backends": {label: (dispatch.select("memory_read", b, device, dtype)) for label, b in backends.items()},
        "setting": dict(setting.__dict__), "memory_method": PeakMeter(device).method, "paper": PAPER,
        "memory": memory_rows, "speed": speed_result, "mrbp": mrbp_rows,
    }
    result["summary"] = summarise(memory_rows, speed_result, mrbp_rows, backends)
    result.update(result["summary"])
    with open(os.path.join(args.out, "claims.json"), "w") as f:
        json.dump(result, f, indent=2)
    markdown = report_markdown(result)
    with open(os.path.join(args.out, "claims.md"), "w") as f:
        f.write(markdown)
    plots(result, args.out)
    print(markdown)
    print(f"written to {args.out}: claims.json, claims.md, memory_vs_size.png, speed.png, mrbp.png"
          + (", trace.json" if args.profile else ""))
    return result


if __name__ == "__main__":
    main()
