"""Reproduce the paper's efficiency claims side by side, in one run.

    python -m benchmarks.claims [--quick] [--device cuda] [--dtype bfloat16] [--out DIR] [--profile]

1. Figure 5 (right): peak inference memory of Memformer and Transformer-XL as
   the memory grows (Memformer slots, TXL cached states per layer), batch 16,
   a long run of 64-token segments, WikiText-103-size models; and the exact
   bytes of state each carries from segment to segment.
2. Table 2: inference tokens/s of `memformer_wt103` against `txl_wt103_base`
   at memory 1024, and FLOPs per segment counted with FlopCounterMode (the
   memory ops have registered formulas), beside the paper's 54 and 168 GFLOPs.
3. Table 3: peak training memory and speed of BPTT, gradient checkpointing
   and MRBP on the paper's setting (12-layer decoder, 8 heads, d 512,
   32 slots, time horizon 4).

Memformer runs twice where it matters: with the fused backend ("auto") and with
the reference backend ("torch"), so the kernels' own contribution shows. On a
CPU the fused backend is not available and "auto" is the reference: the
report says so. Peak memory is `torch.cuda.max_memory_allocated` on CUDA and
live tensor bytes elsewhere (benchmarks/memory_meter.py). `--quick` shrinks
every model and size so the whole run takes under two minutes on a CPU; its
numbers show the method, not the paper's setting.

Writes claims.json, claims.md and three PNG plots to --out, tagged with
device, versions, date and git commit.
"""
import argparse
import json
import os
import platform
import subprocess
import time
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

import memkernels
from memkernels import dispatch
from memkernels.models import Memformer, TransformerXL, memformer_wt103, txl_wt103_base
from memkernels.training import bptt, checkpointed_bptt, mrbp, split_segments

from .memory_meter import peak_bytes

PAPER = {
    "memory_ratio_at_max": 8.1,
    "speed_ratio": 3.2,
    "memformer_gflops": 54.0,
    "txl_gflops": 168.0,
    "mrbp_memory_ratio": 7229 / 16177,
    "mrbp_speed": 0.90,
    "checkpoint_memory_ratio": 9885 / 16177,
    "checkpoint_speed": 0.48,
}


@dataclass(frozen=True)
class Setting:
    memory_sizes: tuple = (64, 128, 256, 512, 1024, 2048)
    batch: int = 16
    segment_len: int = 64
    inference_segments: int = 16
    speed_memory: int = 1024
    vocab_size: int = 267_735
    model: dict = None          # overrides for both WT-103-size models (None: the paper's sizes)
    mrbp_batch: int = 16
    mrbp_horizon: int = 4
    mrbp_model: dict = None     # the paper's Table 3 Memformer: 12-layer decoder, d 512, 8 heads, 32 slots


FULL = Setting(mrbp_model=dict(n_encoder_layers=4, n_decoder_layers=12, d_model=512, n_heads=8, n_slots=32))
QUICK = Setting(
    memory_sizes=(16, 32, 64, 128), batch=4, segment_len=16, inference_segments=4, speed_memory=64,
    vocab_size=256, model=dict(d_model=64, n_heads=4, d_ff=128, layers=2), mrbp_batch=2,
    mrbp_model=dict(n_encoder_layers=1, n_decoder_layers=3, d_model=64, n_heads=4, n_slots=8, d_ff=128),
)


def build_memformer(setting, slots, backend, device, dtype):
    overrides = dict(setting.model or {})
    layers = overrides.pop("layers", None)
    if layers is not None:
        overrides.update(n_encoder_layers=max(1, layers // 2), n_decoder_layers=layers)
    cfg = memformer_wt103(vocab_size=setting.vocab_size, n_slots=slots, backend=backend, dropout=0.0, **overrides)
    return Memformer(cfg).to(device, dtype).eval()


def build_txl(setting, mem_len, device, dtype):
    overrides = dict(setting.model or {})
    layers = overrides.pop("layers", None)
    if layers is not None:
        overrides.update(n_layers=layers, d_head=overrides["d_model"] // overrides["n_heads"])
    cfg = txl_wt103_base(vocab_size=setting.vocab_size, mem_len=mem_len, dropout=0.0, **overrides)
    return TransformerXL(cfg).to(device, dtype).eval()


def best_seconds(fn, device, repeats=3) -> float:
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


@torch.no_grad()
def run_inference(model, tokens, segment_len):
    """Stream `tokens` segment by segment; returns the carried state after the last one."""
    state = model.initial_state(tokens.shape[0], segment_len)
    for start in range(0, tokens.shape[1], segment_len):
        with torch.profiler.record_function(f"{type(model).__name__}.step"):
            _, state = model.step(tokens[:, start:start + segment_len], state)
    return state


def state_bytes(state) -> int:
    return sum(t.numel() * t.element_size() for t in state)


def memory_scaling(setting, device, dtype, backends, progress):
    tokens = torch.randint(0, setting.vocab_size, (setting.batch, setting.inference_segments * setting.segment_len),
                           device=device)
    rows = []
    for size in setting.memory_sizes:
        row = {"memory_size": size}
        txl = build_txl(setting, size, device, dtype)
        row["txl_peak_bytes"], method = peak_bytes(lambda: run_inference(txl, tokens, setting.segment_len), device)
        row["txl_state_bytes"] = state_bytes(run_inference(txl, tokens, setting.segment_len))
        for label, backend in backends.items():
            memformer = build_memformer(setting, size, backend, device, dtype)
            row[f"memformer_{label}_peak_bytes"], _ = peak_bytes(
                lambda: run_inference(memformer, tokens, setting.segment_len), device)
            row["memformer_state_bytes"] = state_bytes(run_inference(memformer, tokens, setting.segment_len))
        rows.append(row)
        progress.update(1)
    return rows, method


def tokens_per_second(model, tokens, segment_len, device, repeats=3):
    run_inference(model, tokens, segment_len)  # warm-up: kernels compiled, allocator primed
    return tokens.numel() / best_seconds(lambda: run_inference(model, tokens, segment_len), device, repeats)


@torch.no_grad()
def gflops_per_segment(model, setting, device):
    """Forward FLOPs of one segment of one sample, memory full (state after a warm-up segment)."""
    tokens = torch.randint(0, setting.vocab_size, (1, setting.segment_len), device=device)
    state = model.initial_state(1, setting.segment_len)
    for _ in range(max(1, -(-getattr(model.cfg, "mem_len", 1) // setting.segment_len))):
        _, state = model.step(tokens, state)
    with FlopCounterMode(display=False) as counter:
        model.step(tokens, state)
    return counter.get_total_flops() / 1e9


def speed(setting, device, dtype, backends, progress):
    size = setting.speed_memory
    tokens = torch.randint(0, setting.vocab_size, (setting.batch, setting.inference_segments * setting.segment_len),
                           device=device)
    txl = build_txl(setting, size, device, dtype)
    result = {"memory_size": size, "txl_tokens_per_s": tokens_per_second(txl, tokens, setting.segment_len, device),
              "txl_gflops_per_segment": gflops_per_segment(txl, setting, device)}
    progress.update(1)
    for label, backend in backends.items():
        memformer = build_memformer(setting, size, backend, device, dtype)
        result[f"memformer_{label}_tokens_per_s"] = tokens_per_second(memformer, tokens, setting.segment_len, device)
        result["memformer_gflops_per_segment"] = gflops_per_segment(memformer, setting, device)
        progress.update(1)
    return result


def mrbp_table(setting, device, dtype, backends, progress):
    rows = {}
    stream = torch.randint(0, setting.vocab_size, (setting.mrbp_batch, setting.mrbp_horizon * setting.segment_len + 1),
                           device=device)
    segments = split_segments(stream, setting.segment_len)
    for label, backend in backends.items():
        model = Memformer(memformer_wt103(vocab_size=setting.vocab_size, backend=backend,
                                          **setting.mrbp_model)).to(device, dtype).train()
        for scheme in (bptt, checkpointed_bptt, mrbp):
            def train_step():
                model.zero_grad(set_to_none=True)
                scheme(model, segments, model.initial_state(setting.mrbp_batch, setting.segment_len))

            train_step()  # warm-up
            peak, method = peak_bytes(train_step, device)
            rows[f"{label}/{scheme.__name__}"] = {
                "peak_bytes": peak, "seconds_per_step": best_seconds(train_step, device), "method": method}
            progress.update(1)
    return rows


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


def summarise(memory_rows, speed_result, mrbp_rows, backends) -> dict:
    fused = "fused" if "fused" in backends else "reference"
    largest = memory_rows[-1]
    base = mrbp_rows[f"{fused}/bptt"]
    return {
        "memory_ratio_at_max": largest["txl_peak_bytes"] / largest[f"memformer_{fused}_peak_bytes"],
        "state_ratio_at_max": largest["txl_state_bytes"] / largest["memformer_state_bytes"],
        "speed_ratio": speed_result[f"memformer_{fused}_tokens_per_s"] / speed_result["txl_tokens_per_s"],
        "mrbp_memory_ratio": mrbp_rows[f"{fused}/mrbp"]["peak_bytes"] / base["peak_bytes"],
        "mrbp_speed": base["seconds_per_step"] / mrbp_rows[f"{fused}/mrbp"]["seconds_per_step"],
        "checkpoint_memory_ratio": mrbp_rows[f"{fused}/checkpointed_bptt"]["peak_bytes"] / base["peak_bytes"],
        "checkpoint_speed": base["seconds_per_step"] / mrbp_rows[f"{fused}/checkpointed_bptt"]["seconds_per_step"],
        "memformer_gflops": speed_result["memformer_gflops_per_segment"],
        "txl_gflops": speed_result["txl_gflops_per_segment"],
    }


def report_markdown(result) -> str:
    s = result["summary"]
    lines = [
        f"# Paper claims reproduced on {result['device']}",
        "",
        f"torch {result['torch']}, triton {result['triton']}, CUDA {result['cuda']}, memkernels "
        f"{result['memkernels']}, commit {result['git_commit'][:12]}, {result['date']}, dtype {result['dtype']}, "
        f"{'QUICK (small sizes: method check, not the paper setting)' if result['quick'] else 'paper setting'}.",
        f"Memformer backends: {result['backends']}. Peak memory: {result['memory_method']}.",
        "",
        "| claim | measured | paper |",
        "|---|---|---|",
        f"| TXL / Memformer peak inference memory at memory {result['memory'][-1]['memory_size']} | "
        f"{s['memory_ratio_at_max']:.2f}x | {PAPER['memory_ratio_at_max']}x |",
        f"| TXL / Memformer carried-state bytes at memory {result['memory'][-1]['memory_size']} | "
        f"{s['state_ratio_at_max']:.2f}x | - |",
        f"| Memformer / TXL inference tokens/s at memory {result['speed']['memory_size']} | "
        f"{s['speed_ratio']:.2f}x | {PAPER['speed_ratio']}x |",
        f"| GFLOPs per segment (one sample): Memformer | {s['memformer_gflops']:.3g} | {PAPER['memformer_gflops']} |",
        f"| GFLOPs per segment (one sample): TXL | {s['txl_gflops']:.3g} | {PAPER['txl_gflops']} |",
        f"| MRBP / BPTT peak training memory | {s['mrbp_memory_ratio']:.2f} | {PAPER['mrbp_memory_ratio']:.2f} |",
        f"| MRBP speed relative to BPTT | x{s['mrbp_speed']:.2f} | x{PAPER['mrbp_speed']:.2f} |",
        f"| checkpointing / BPTT peak training memory | {s['checkpoint_memory_ratio']:.2f} | "
        f"{PAPER['checkpoint_memory_ratio']:.2f} |",
        f"| checkpointing speed relative to BPTT | x{s['checkpoint_speed']:.2f} | x{PAPER['checkpoint_speed']:.2f} |",
        "",
        "## Memory vs memory size (MiB)",
        "",
    ]
    keys = [k for k in result["memory"][0] if k.endswith("_bytes")]
    lines += ["| memory size | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for row in result["memory"]:
        lines.append(f"| {row['memory_size']} | " + " | ".join(f"{row[k] / 2**20:.1f}" for k in keys) + " |")
    lines += ["", "## Training (Table 3)", "", "| backend/scheme | peak MiB | s/step |", "|---|---|---|"]
    for name, row in result["mrbp"].items():
        lines.append(f"| {name} | {row['peak_bytes'] / 2**20:.1f} | {row['seconds_per_step']:.4f} |")
    return "\n".join(lines) + "\n"


def plots(result, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["memory_size"] for r in result["memory"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in [k for k in result["memory"][0] if k.endswith("_peak_bytes")]:
        ax.plot(sizes, [r[key] / 2**20 for r in result["memory"]], marker="o", label=key.removesuffix("_peak_bytes"))
    ax.set(xscale="log", xlabel="memory size (slots / cached states)", ylabel="peak inference memory (MiB)",
           title=f"Figure 5 (right) on {result['device']}")
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "memory_vs_size.png"), dpi=120)

    fig, ax = plt.subplots(figsize=(6, 4))
    names = [k.removesuffix("_tokens_per_s") for k in result["speed"] if k.endswith("_tokens_per_s")]
    ax.bar(names, [result["speed"][n + "_tokens_per_s"] for n in names])
    ax.set(ylabel="inference tokens/s", title=f"Table 2 speed, memory {result['speed']['memory_size']}")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "speed.png"), dpi=120)

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4))
    names = list(result["mrbp"])
    left.bar(names, [result["mrbp"][n]["peak_bytes"] / 2**20 for n in names])
    right.bar(names, [result["mrbp"][n]["seconds_per_step"] for n in names])
    left.set(ylabel="peak training memory (MiB)")
    right.set(ylabel="seconds per step")
    for ax in (left, right):
        ax.tick_params(axis="x", rotation=60)
    fig.suptitle("Table 3: BPTT, gradient checkpointing, MRBP")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "mrbp.png"), dpi=120)


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
                        help="small models and sizes: under two minutes on a CPU (checks the method only)")
    parser.add_argument("--out", default="benchmarks/results/local", help="directory for claims.json/.md and plots")
    parser.add_argument("--profile", action="store_true",
                        help="also write a torch.profiler trace (trace.json, open in Perfetto or chrome://tracing)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    setting = QUICK if args.quick else FULL
    fused = dispatch.select("memory_read", "auto", device, dtype)
    backends = {"fused": "auto", "reference": "torch"} if fused != "torch" else {"reference": "torch"}
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)

    steps = len(setting.memory_sizes) + 1 + len(backends) + 3 * len(backends)
    profiler = torch.profiler.profile(record_shapes=False) if args.profile else None
    with _progress(steps) as progress:
        if profiler is not None:
            profiler.__enter__()
        memory_rows, method = memory_scaling(setting, device, dtype, backends, progress)
        speed_result = speed(setting, device, dtype, backends, progress)
        mrbp_rows = mrbp_table(setting, device, dtype, backends, progress)
        if profiler is not None:
            profiler.__exit__(None, None, None)
            profiler.export_chrome_trace(os.path.join(args.out, "trace.json"))

    result = {
        **describe(device), "dtype": str(dtype).removeprefix("torch."), "quick": args.quick,
        "backends": {label: (dispatch.select("memory_read", b, device, dtype)) for label, b in backends.items()},
        "setting": {k: v for k, v in setting.__dict__.items()}, "memory_method": method,
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
