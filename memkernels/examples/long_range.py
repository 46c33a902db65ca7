"""Does memory help? Train five small models on long-range tasks and compare.

    python -m memkernels.examples.long_range --quick
    python -m memkernels.examples.long_range --quick --tasks copy --models memformer dnc

Trains, on the CPU in minutes with --quick, every model of `--models`:
* no-memory: Transformer-XL with no cache (it sees only its segment);
* txl-1-segment: Transformer-XL with a cache of one segment (`mem_len = segment_len`);
* memformer: memory slots written and read through the memkernels ops;
* kv-memory: `KVMemoryTransformer`, a store of past keys/values with top-k retrieval;
* dnc: `DNCTransformer`, a DNC memory written and read per token;
on every task of `--tasks` (`memkernels.examples.tasks`: copy, brackets,
associative recall), whose answer lies 1 to n_segments-1 segments back. Then
it prints, per task, answer accuracy per distance and the answer loss against
sequence length (the source in the first segment of sequences of 2 to 8
segments; training sees up to 5), and saves both as plots. The last lines are
each model's overall accuracy per task. Loss is taken on the answer tokens
only: filler is random and unlearnable.

Every run (task, model) is seeded on its own: the models of a task see the same
training batches, and a run's result does not depend on which other runs were
asked for or on `--jobs`, which spreads the runs over processes of one thread each.
"""
import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path

import torch
import torch.nn.functional as F

from memkernels.examples.tasks import TASKS, TaskSpec, make_batch
from memkernels.models import (
    DNCConfig,
    DNCTransformer,
    KVMemoryConfig,
    KVMemoryTransformer,
    Memformer,
    MemformerConfig,
    TransformerXL,
    TransformerXLConfig,
)
from memkernels.models.segments import rollout_loss, split_segments

MODELS = ("no-memory", "txl-1-segment", "memformer", "kv-memory", "dnc")
LENGTHS = (2, 3, 5, 8)  # segments per sequence for the loss against sequence length


def build_model(name: str, spec: TaskSpec, d_model: int, backend: str):
    layers = dict(vocab_size=spec.vocab_size, d_model=d_model, n_heads=4, d_ff=4 * d_model, dropout=0.0)
    longest = max(LENGTHS) * spec.segment_len
    if name in ("no-memory", "txl-1-segment"):
        mem_len = spec.segment_len if name == "txl-1-segment" else 0
        return TransformerXL(TransformerXLConfig(d_head=d_model // 4, n_layers=2, mem_len=mem_len, **layers))
    if name == "memformer":
        return Memformer(MemformerConfig(n_encoder_layers=2, n_decoder_layers=2, n_slots=16, backend=backend,
                                         **layers))
    if name == "kv-memory":  # a store that holds the longest evaluated sequence
        return KVMemoryTransformer(KVMemoryConfig(n_layers=2, capacity=longest, top_k=8, chunk_size=32,
                                                  backend=backend, **layers))
    if name == "dnc":  # reads added after the first layer, so that the second one can use them
        return DNCTransformer(DNCConfig(n_layers=2, memory_layer=0, n_slots=16, slot_width=32, n_reads=2,
                                        backend=backend, **layers))
    raise ValueError(f"model must be one of {MODELS}, got {name!r}")


def answer_segments(tokens, answer_mask, segment_len):
    """LM segments whose targets keep only the answer tokens."""
    targets = tokens[:, 1:].masked_fill(~answer_mask, -100)
    segments = split_segments(tokens, segment_len)
    scored = split_segments(torch.cat([tokens[:, :1], targets], dim=1), segment_len)
    return [s._replace(targets=t.targets) for s, t in zip(segments, scored)]


def train(model, task, spec, steps, batch, lr, generator, log, log_every):
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    for step in range(1, steps + 1):
        distances = torch.randint(1, spec.n_segments, (batch,), generator=generator)
        tokens, answer = make_batch(task, spec, batch, distances, generator)
        segments = answer_segments(tokens, answer, spec.segment_len)
        loss, _ = rollout_loss(model, segments, model.initial_state(batch, spec.segment_len))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % log_every == 0 or step == steps:
            log(f"    step {step:5d}  answer loss {loss.item():.3f}")


@torch.no_grad()
def answer_scores(model, task, spec, distances, generator):
    """(correct (answers,) bool, loss (answers,)) of the answer tokens of one batch."""
    model.eval()
    tokens, answer = make_batch(task, spec, len(distances), distances, generator)
    state = model.initial_state(len(distances), spec.segment_len)
    correct, losses = [], []
    for seg in answer_segments(tokens, answer, spec.segment_len):
        logits, state = model.step(seg.inputs, state, seg.padding_mask)
        keep = seg.targets != -100
        correct.append((logits.argmax(-1) == seg.targets)[keep])
        losses.append(F.cross_entropy(logits[keep], seg.targets[keep], reduction="none"))
    return torch.cat(correct), torch.cat(losses)


def accuracy_by_distance(model, task, spec, samples, generator) -> dict[int, float]:
    return {distance: answer_scores(model, task, spec, torch.full((samples,), distance), generator)[0]
            .float().mean().item() for distance in range(1, spec.n_segments)}


def loss_by_length(model, task, spec, samples, generator) -> dict[int, float]:
    """Answer loss per sequence length in tokens, the source in the first segment."""
    result = {}
    for n in LENGTHS:
        longer = replace(spec, n_segments=n)
        losses = answer_scores(model, task, longer, torch.full((samples,), n - 1), generator)[1]
        result[n * spec.segment_len] = losses.mean().item()
    return result


def run_one(task: str, name: str, args) -> dict:
    """Train one model on one task and measure it; seeded by (seed, task, model) alone.

    One thread: tiny models run no faster on more, and `--jobs` keeps the cores busy instead.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_and_measure(task, name, args)
    finally:
        torch.set_num_threads(threads)


def _train_and_measure(task: str, name: str, args) -> dict:
    spec = TaskSpec()
    torch.manual_seed(args.seed * 1000 + MODELS.index(name))
    model = build_model(name, spec, args.d_model, args.backend).to(args.device)
    generator = torch.Generator().manual_seed(args.seed * 1000 + 100 + TASKS.index(task))
    lines = [f"training {name} on {task} ({args.steps} steps)"]
    started = time.perf_counter()
    train(model, task, spec, args.steps, args.batch, args.lr, generator, lines.append, max(1, args.steps // 4))
    evaluation = torch.Generator().manual_seed(args.seed * 1000 + 200 + TASKS.index(task))
    accuracy = accuracy_by_distance(model, task, spec, 256, evaluation)
    loss = loss_by_length(model, task, spec, 128, evaluation)
    lines.append(f"    {time.perf_counter() - started:.0f} s")
    return {"log": lines, "accuracy": accuracy, "loss": loss}


def print_tables(task, spec, by_model):
    print(f"\n== {task} ==\nanswer accuracy by distance in segments (chance ~{chance(task, spec):.2f}):")
    print("model          " + "".join(f"{d:>7d}" for d in range(1, spec.n_segments)))
    for name, result in by_model.items():
        print(f"{name:<15}" + "".join(f"{acc:7.2f}" for acc in result["accuracy"].values()))
    lengths = [n * spec.segment_len for n in LENGTHS]
    print(f"answer loss by sequence length in tokens (source in the first segment; trained on up to "
          f"{spec.n_segments * spec.segment_len}):")
    print("model          " + "".join(f"{n:>7d}" for n in lengths))
    for name, result in by_model.items():
        print(f"{name:<15}" + "".join(f"{loss:7.2f}" for loss in result["loss"].values()))


def chance(task: str, spec: TaskSpec) -> float:
    return 2 / spec.n_symbols if task == "brackets" else 1 / spec.n_symbols


def plot(results: dict, key: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False)
    for ax, (task, by_model) in zip(axes[0], results.items()):
        for name, result in by_model.items():
            ax.plot(list(result[key]), list(result[key].values()), marker="o", label=name)
        if key == "accuracy":
            ax.set(xlabel="distance to the answer (segments)", ylabel="answer accuracy", ylim=(0, 1.05))
        else:
            ax.set(xlabel="sequence length (tokens)", ylabel="answer loss (nats)")
        ax.set_title(f"long-range {task}")
        ax.set_xticks(list(next(iter(by_model.values()))[key]))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS), help="which long-range tasks")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="which models")
    parser.add_argument("--quick", action="store_true", help="small models and few steps: minutes on a CPU")
    parser.add_argument("--steps", type=int, help="training steps per model (default 300 quick, 3000 full)")
    parser.add_argument("--batch", type=int, default=32, help="samples per training step")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (one-cycle schedule)")
    parser.add_argument("--backend", default="auto", help="memkernels backend for the memory ops")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="runs in parallel, one process of one thread each (default: one per CPU core)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default="long_range.png",
                        help="where to save the accuracy plot (PNG); the loss plot goes beside it, *_loss.png")
    args = parser.parse_args(argv)
    args.steps = args.steps or (300 if args.quick else 3000)
    args.d_model = 64 if args.quick else 128
    spec = TaskSpec()

    runs = [(task, name) for task in args.tasks for name in args.models]
    if args.jobs > 1 and len(runs) > 1:
        with ProcessPoolExecutor(min(args.jobs, len(runs)), mp_context=get_context("spawn")) as pool:
            outcomes = list(pool.map(run_one, *zip(*runs), [args] * len(runs)))
    else:
        outcomes = [run_one(task, name, args) for task, name in runs]
    results = {task: {} for task in args.tasks}
    for (task, name), outcome in zip(runs, outcomes):
        print("\n".join(outcome["log"]), flush=True)
        results[task][name] = outcome

    for task, by_model in results.items():
        print_tables(task, spec, by_model)
    loss_plot = str(Path(args.plot).with_name(Path(args.plot).stem + "_loss.png"))
    plot(results, "accuracy", args.plot)
    plot(results, "loss", loss_plot)
    print(f"\nplots saved to {args.plot} and {loss_plot}\n")
    for task, by_model in results.items():
        for name, result in by_model.items():
            by_distance = result["accuracy"]
            beyond = [acc for d, acc in by_distance.items() if d >= 2]
            print(f"{task} {name}: accuracy {sum(by_distance.values()) / len(by_distance):.3f} overall, "
                  f"{sum(beyond) / len(beyond):.3f} at 2+ segments back")
    return {task: {name: r["accuracy"] for name, r in by_model.items()} for task, by_model in results.items()}


if __name__ == "__main__":
    main()
