"""The claims run's markdown report and plots (benchmarks/claims.py measures, this module shows).

Every ratio says what it divides: Transformer-XL's number over Memformer's for
memory and FLOPs (larger = Memformer better), Memformer's tokens/s over TXL's
for speed; "cached TXL" is the TXL that was timed (each position computed once,
then read from the cache), "recomputing TXL" one that runs every position of
[memory; segment] through every layer each segment (what the paper's TXL
GFLOPs fit); "with head" includes the adaptive softmax's log-likelihood of the
targets, "no head" stops at the hidden states.
"""
import os

MIB = 2**20
PAPER = {
    "memory_ratio_at_max": 8.1,
    "speed_ratio": 3.2,
    "memformer_gflops": 54.0,
    "txl_gflops": 168.0,
    "flop_ratio": 168.0 / 54.0,
    "mrbp_memory_ratio": 7229 / 16177,
    "mrbp_speed": 0.90,
    "checkpoint_memory_ratio": 9885 / 16177,
    "checkpoint_speed": 0.48,
    "mrbp_memory_delta_horizon16_mb": 62,
}


def _x(value):
    return f"{value:.2f}x"


def _mib(value):
    return "not measured" if value is None else f"{value / MIB:.1f} MiB"


def headline(result) -> list[str]:
    s, largest = result["summary"], result["memory"][-1]["memory_size"]
    speed_memory = result["speed"]["memformer_memory"]
    return [
        "| claim | measured | paper | what is divided |",
        "|---|---|---|---|",
        f"| peak inference memory at memory {largest}, total | {_x(s['memory_ratio_at_max'])} "
        f"| {PAPER['memory_ratio_at_max']}x | TXL / Memformer, steady state, weights included |",
        f"| peak inference memory at memory {largest}, minus weights | "
        f"{_x(s['memory_minus_weights_ratio_at_max'])} | - | TXL / Memformer, steady state, beyond the weights |",
        f"| carried-state bytes at memory {largest} | {_x(s['state_ratio_at_max'])} (formula "
        f"{_x(s['state_formula_ratio_at_max'])}) | - | TXL cache / Memformer slots + context |",
        f"| inference tokens/s at memory {speed_memory}, with head | {_x(s['speed_ratio'])} | "
        f"{PAPER['speed_ratio']}x | Memformer / cached TXL |",
        f"| inference tokens/s at memory {speed_memory}, no head | {_x(s['speed_ratio_no_head'])} | - "
        "| Memformer / cached TXL |",
        f"| FLOPs per segment, with head | {_x(s['flop_ratio'])} | {PAPER['flop_ratio']:.2f}x "
        "| cached TXL / Memformer |",
        f"| FLOPs per segment, no head | {_x(s['flop_ratio_no_head'])} | - | cached TXL / Memformer |",
        f"| FLOPs per segment, with head | {_x(s['flop_ratio_recompute_txl'])} | {PAPER['flop_ratio']:.2f}x "
        "| recomputing TXL / Memformer |",
        f"| FLOPs per segment, no head | {_x(s['flop_ratio_recompute_txl_no_head'])} | - "
        "| recomputing TXL / Memformer |",
        f"| GFLOPs per segment per sample: Memformer | {s['memformer_gflops']:.3g} | {PAPER['memformer_gflops']} "
        "| with head |",
        f"| GFLOPs per segment per sample: cached TXL | {s['txl_gflops']:.3g} | - | with head |",
        f"| GFLOPs per segment per sample: recomputing TXL | {s['txl_recompute_gflops']:.3g} | "
        f"{PAPER['txl_gflops']} | with head |",
        f"| peak training memory, horizon 4, total | {s['mrbp_memory_ratio']:.2f} | "
        f"{PAPER['mrbp_memory_ratio']:.2f} | MRBP / BPTT |",
        f"| peak training memory, horizon 4, minus weights | {s['mrbp_memory_ratio_minus_weights']:.2f} | - "
        "| MRBP / BPTT |",
        f"| training speed, horizon 4 | x{s['mrbp_speed']:.2f} | x{PAPER['mrbp_speed']:.2f} | MRBP / BPTT |",
        f"| peak training memory, horizon 4, total | {s['checkpoint_memory_ratio']:.2f} | "
        f"{PAPER['checkpoint_memory_ratio']:.2f} | checkpointing / BPTT |",
        f"| training speed, horizon 4 | x{s['checkpoint_speed']:.2f} | x{PAPER['checkpoint_speed']:.2f} "
        "| checkpointing / BPTT |",
        f"| MRBP peak memory added by horizon 16 over 4 | {_mib(s['mrbp_memory_delta_horizon16_bytes'])} | "
        f"{PAPER['mrbp_memory_delta_horizon16_mb']} MB | difference, not a ratio |",
    ]


def memory_table(result) -> list[str]:
    names = ["txl"] + [k.removesuffix("_state_bytes") for k in result["memory"][0]
                       if k.startswith("memformer_") and k.endswith("_state_bytes")]
    memformer = names[1]
    lines = ["| memory | " + " | ".join(f"{n} state (formula) | {n} peak - weights | {n} total peak" for n in names)
             + " | state ratio | peak - weights ratio | total ratio |",
             "|---" * (1 + 3 * len(names) + 3) + "|"]
    for row in result["memory"]:
        cells = [str(row["memory_size"])]
        for n in names:
            cells += [f"{row[f'{n}_state_bytes'] / MIB:.2f} ({row[f'{n}_state_formula_bytes'] / MIB:.2f})",
                      f"{row[f'{n}_peak_minus_weights_bytes'] / MIB:.1f}", f"{row[f'{n}_peak_bytes'] / MIB:.1f}"]
        cells += [_x(row[f"txl_{k}"] / row[f"{memformer}_{k}"])
                  for k in ("state_bytes", "peak_minus_weights_bytes", "peak_bytes")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def speed_table(result) -> list[str]:
    speed = result["speed"]
    mf, m = speed["memformer"], speed["memformer_memory"]
    fused = next(k for k in mf if isinstance(mf[k], dict))
    lines = [f"Memformer at {m} slots: " + "; ".join(
        f"{label} {v['tokens_per_s']:.0f} tokens/s with head, {v['tokens_per_s_no_head']:.0f} without"
        for label, v in mf.items() if isinstance(v, dict))
        + f"; {mf['gflops']:.3g} GFLOPs per segment per sample with head, {mf['gflops_no_head']:.3g} without.", "",
        f"Ratios: Memformer ({fused}) / TXL for tokens/s, TXL / Memformer for FLOPs; head / no head.", "",
        f"| TXL memory | TXL tokens/s (head / no head) | speed, Memformer@{m} | FLOPs, cached TXL vs Memformer@{m} "
        f"| FLOPs, recomputing TXL vs Memformer@{m} | speed, Memformer@equal | FLOPs, cached TXL vs Memformer@equal "
        "| TXL GFLOPs cached / recomputing (head) |", "|---|---|---|---|---|---|---|---|"]
    for row in speed["rows"]:
        def pair(a, b):
            return f"{_x(a[0] / b[0])} / {_x(a[1] / b[1])}"
        txl_speed = (row["txl_tokens_per_s"], row["txl_tokens_per_s_no_head"])
        txl_flops = (row["txl_gflops"], row["txl_gflops_no_head"])
        recompute = (row["txl_recompute_gflops"], row["txl_recompute_gflops_no_head"])
        mf_speed = (mf[fused]["tokens_per_s"], mf[fused]["tokens_per_s_no_head"])
        mf_flops = (mf["gflops"], mf["gflops_no_head"])
        eq_speed = (row["memformer_equal_tokens_per_s"], row["memformer_equal_tokens_per_s_no_head"])
        eq_flops = (row["memformer_equal_gflops"], row["memformer_equal_gflops_no_head"])
        lines.append(f"| {row['txl_memory']} | {txl_speed[0]:.0f} / {txl_speed[1]:.0f} | {pair(mf_speed, txl_speed)} "
                     f"| {pair(txl_flops, mf_flops)} | {pair(recompute, mf_flops)} | {pair(eq_speed, txl_speed)} "
                     f"| {pair(txl_flops, eq_flops)} | {row['txl_gflops']:.3g} / {row['txl_recompute_gflops']:.3g} |")
    return lines


def training_table(result) -> list[str]:
    lines = ["| backend | scheme | horizon | total peak MiB | minus weights MiB | s/step | memory / BPTT "
             "| speed vs BPTT |", "|---|---|---|---|---|---|---|---|"]
    for row in result["mrbp"].values():
        base = result["mrbp"][f"{row['backend']}/bptt/h{row['horizon']}"]
        lines.append(f"| {row['backend']} | {row['scheme']} | {row['horizon']} | {row['peak_bytes'] / MIB:.1f} "
                     f"| {row['peak_minus_weights_bytes'] / MIB:.1f} | {row['seconds_per_step']:.4f} "
                     f"| {row['peak_bytes'] / base['peak_bytes']:.2f} "
                     f"| x{base['seconds_per_step'] / row['seconds_per_step']:.2f} |")
    return lines


def report_markdown(result) -> str:
    setting = result["setting"]
    runner = "captured in CUDA graphs (StreamingRunner)" if result["speed"]["graphed"] else \
        "run eagerly (StreamingRunner's fallback: no CUDA)"
    lines = [
        f"# Paper claims reproduced on {result['device']}",
        "",
        f"torch {result['torch']}, triton {result['triton']}, CUDA {result['cuda']}, memkernels "
        f"{result['memkernels']}, commit {result['git_commit'][:12]}, {result['date']}, dtype {result['dtype']}, "
        f"{'QUICK (small sizes: checks the method, not the paper setting)' if result['quick'] else 'paper setting'}.",
        f"Memformer backends: {result['backends']}. Peak memory: {result['memory_method']}, reset once the caches "
        f"are full ({result['memory'][0]['segments']} segments of {setting['segment_len']}, batch {setting['batch']}).",
        f"Both models: adaptive softmax head (vocabulary {setting['vocab_size']}, cutoffs {list(setting['cutoffs'])}, "
        f"tied), Zipf targets (s = {setting['zipf_exponent']}); segments {runner}; Transformer-XL with a "
        "fixed-size cache. FLOPs per sample at the measured batch, forward only.",
        "",
        "Ratios: TXL / Memformer for memory and FLOPs, Memformer / TXL for speed (above 1: Memformer better); "
        "cached TXL = the TXL that was timed, recomputing TXL = every position of [memory; segment] through "
        "every layer each segment (what the paper's TXL GFLOPs fit).",
        "",
        *headline(result),
        "",
        "## Memory vs memory size (MiB)",
        "",
        *memory_table(result),
        "",
        "## Speed and FLOPs (Table 2 layout)",
        "",
        *speed_table(result),
        "",
        "## Training (Table 3)",
        "",
        *training_table(result),
    ]
    return "\n".join(lines) + "\n"


def plots(result, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["memory"]
    sizes = [r["memory_size"] for r in rows]
    memformer = next(k.removesuffix("_state_bytes") for k in rows[0]
                     if k.startswith("memformer_") and k.endswith("_state_bytes"))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, color in (("txl", "tab:red"), (memformer, "tab:blue")):
        for key, style, what in (("state_bytes", ":", "state"), ("peak_minus_weights_bytes", "-", "peak - weights"),
                                 ("peak_bytes", "--", "total peak")):
            left.plot(sizes, [r[f"{name}_{key}"] / MIB for r in rows], style, color=color, marker="o",
                      label=f"{name} {what}")
    left.set(xscale="log", yscale="log", xlabel="memory size (TXL cached states per layer / slots)", ylabel="MiB",
             title="steady-state inference memory")
    for key, style, what in (("state_bytes", "o", "state"), ("peak_minus_weights_bytes", "s", "peak - weights"),
                             ("peak_bytes", "^", "total peak")):
        right.plot(sizes, [r[f"txl_{key}"] / r[f"{memformer}_{key}"] for r in rows], style + "-",
                   label=f"{what} ratio")
    right.plot(sizes, [r["txl_state_formula_bytes"] / r[f"{memformer}_state_formula_bytes"] for r in rows], "k--",
               label="state ratio, formula")
    right.axhline(PAPER["memory_ratio_at_max"], color="gray", lw=0.8, label="paper (8.1x)")
    right.set(xscale="log", xlabel="memory size", ylabel="TXL / Memformer", title="ratios")
    for ax in (left, right):
        ax.minorticks_off()
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.legend(fontsize=7)
    fig.suptitle(f"Figure 5 (right) on {result['device']}")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "memory_vs_size.png"), dpi=120)

    speed = result["speed"]
    memories = [r["txl_memory"] for r in speed["rows"]]
    mf = speed["memformer"]
    fused = next(k for k in mf if isinstance(mf[k], dict))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for suffix, style in (("", "-"), ("_no_head", "--")):
        label = "with head" if not suffix else "no head"
        left.plot(memories, [r[f"txl_tokens_per_s{suffix}"] for r in speed["rows"]], style, color="tab:red",
                  marker="o", label=f"TXL, {label}")
        left.plot(memories, [r[f"memformer_equal_tokens_per_s{suffix}"] for r in speed["rows"]], style,
                  color="tab:blue", marker="s", label=f"Memformer, equal memory, {label}")
        left.axhline(mf[fused][f"tokens_per_s{suffix}"], ls=style, color="tab:green",
                     label=f"Memformer@{speed['memformer_memory']}, {label}")
        right.plot(memories, [mf[fused][f"tokens_per_s{suffix}"] / r[f"txl_tokens_per_s{suffix}"]
                              for r in speed["rows"]], style, marker="o", color="tab:green",
                   label=f"speed ratio, {label}")
        right.plot(memories, [r[f"txl_gflops{suffix}"] / mf[f"gflops{suffix}"] for r in speed["rows"]], style,
                   marker="s", color="tab:purple", label=f"FLOP ratio, cached TXL, {label}")
        right.plot(memories, [r[f"txl_recompute_gflops{suffix}"] / mf[f"gflops{suffix}"] for r in speed["rows"]],
                   style, marker="^", color="tab:orange", label=f"FLOP ratio, recomputing TXL, {label}")
    right.axhline(PAPER["speed_ratio"], color="gray", lw=0.8, label="paper (3.2x)")
    left.set(xlabel="TXL memory", ylabel="inference tokens/s", title="tokens/s")
    right.set(xlabel="TXL memory", ylabel=f"Memformer@{speed['memformer_memory']} vs TXL", title="ratios")
    for ax in (left, right):
        ax.legend(fontsize=7)
    fig.suptitle(f"Table 2 on {result['device']}")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "speed.png"), dpi=120)

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    train = result["mrbp"]
    names = [n.replace("checkpointed_bptt", "ckpt").replace("/", " ") for n in train]
    left.bar(names, [row["peak_bytes"] / MIB for row in train.values()], label="total")
    left.bar(names, [row["peak_minus_weights_bytes"] / MIB for row in train.values()], label="minus weights")
    right.bar(names, [row["seconds_per_step"] for row in train.values()])
    left.set(ylabel="peak training memory (MiB)")
    left.legend(fontsize=7)
    right.set(ylabel="seconds per step")
    for ax in (left, right):
        ax.tick_params(axis="x", rotation=45)
    fig.suptitle("Table 3: BPTT, gradient checkpointing, MRBP")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "mrbp.png"), dpi=120)
