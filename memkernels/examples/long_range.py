"""Does memory help? Train three small models on a long-range task and compare.

    python -m memkernels.examples.long_range --task copy --quick

Trains, on the CPU in a few minutes with --quick,
* Memformer (memory slots, written and read through the memkernels ops),
* Transformer-XL with a cache of one segment (`mem_len = segment_len`),
* a no-memory model (Transformer-XL with no cache: it sees only its segment),
on a task of `memkernels.examples.tasks` whose answer lies 1 to n_segments-1
segments back, then prints answer accuracy per distance and saves a plot of
accuracy against distance. The last lines are each model's overall accuracy.
Loss is taken on the answer tokens only: filler is random and unlearnable.
"""
import argparse
import time

import torch

from memkernels.examples.tasks import TASKS, TaskSpec, make_batch
from memkernels.models import Memformer, MemformerConfig, TransformerXL, TransformerXLConfig
from memkernels.models.segments import rollout_loss, split_segments


def build_models(spec: TaskSpec, d_model: int, backend: str) -> dict:
    layers = dict(d_model=d_model, n_heads=4, d_ff=4 * d_model, dropout=0.0)
    txl = dict(vocab_size=spec.vocab_size, d_head=d_model // 4, n_layers=2,
               **{k: v for k, v in layers.items() if k != "d_model"}, d_model=d_model)
    return {
        "memformer": Memformer(MemformerConfig(vocab_size=spec.vocab_size, n_encoder_layers=2, n_decoder_layers=2,
                                               n_slots=16, backend=backend, **layers)),
        "txl-1-segment": TransformerXL(TransformerXLConfig(mem_len=spec.segment_len, **txl)),
        "no-memory": TransformerXL(TransformerXLConfig(mem_len=0, **txl)),
    }


def answer_segments(tokens, answer_mask, segment_len):
    """LM segments whose targets keep only the answer tokens."""
    targets = tokens[:, 1:].masked_fill(~answer_mask, -100)
    segments = split_segments(tokens, segment_len)
    scored = split_segments(torch.cat([tokens[:, :1], targets], dim=1), segment_len)
    return [s._replace(targets=t.targets) for s, t in zip(segments, scored)]


def train(model, task, spec, steps, batch, lr, generator, log_every):
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
            print(f"    step {step:5d}  answer loss {loss.item():.3f}", flush=True)


@torch.no_grad()
def accuracy_by_distance(model, task, spec, samples, generator) -> dict[int, float]:
    model.eval()
    result = {}
    for distance in range(1, spec.n_segments):
        tokens, answer = make_batch(task, spec, samples, torch.full((samples,), distance), generator)
        state = model.initial_state(samples, spec.segment_len)
        correct = []
        for seg, scored in zip(split_segments(tokens, spec.segment_len),
                               answer_segments(tokens, answer, spec.segment_len)):
            logits, state = model.step(seg.inputs, state, seg.padding_mask)
            keep = scored.targets != -100
            correct.append((logits.argmax(-1) == seg.targets)[keep])
        result[distance] = torch.cat(correct).float().mean().item()
    return result


def plot(results: dict, task: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, by_distance in results.items():
        ax.plot(list(by_distance), list(by_distance.values()), marker="o", label=name)
    ax.set(xlabel="distance to the answer (segments)", ylabel="answer accuracy", ylim=(0, 1.05),
           title=f"long-range {task}")
    ax.set_xticks(list(next(iter(results.values()))))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=TASKS, default="copy", help="which long-range task")
    parser.add_argument("--quick", action="store_true", help="small model and few steps: minutes on a CPU")
    parser.add_argument("--steps", type=int, help="training steps per model (default 400 quick, 3000 full)")
    parser.add_argument("--batch", type=int, default=32, help="samples per training step")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (one-cycle schedule)")
    parser.add_argument("--backend", default="auto", help="memkernels backend for Memformer's memory ops")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default="long_range.png", help="where to save the accuracy plot (PNG)")
    args = parser.parse_args(argv)

    spec = TaskSpec()
    steps = args.steps or (400 if args.quick else 3000)
    d_model = 64 if args.quick else 128
    generator = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    results = {}
    for name, model in build_models(spec, d_model, args.backend).items():
        print(f"training {name} on {args.task} ({steps} steps)", flush=True)
        started = time.perf_counter()
        train(model, args.task, spec, steps, args.batch, args.lr, generator, log_every=max(1, steps // 4))
        results[name] = accuracy_by_distance(model, args.task, spec, 256, generator)
        print(f"    {time.perf_counter() - started:.0f} s", flush=True)

    print(f"\nanswer accuracy by distance in segments ({args.task}, chance ~{1 / spec.n_symbols:.2f}):")
    print("model          " + "".join(f"{d:>7d}" for d in range(1, spec.n_segments)))
    for name, by_distance in results.items():
        print(f"{name:<15}" + "".join(f"{acc:7.2f}" for acc in by_distance.values()))
    plot(results, args.task, args.plot)
    print(f"plot saved to {args.plot}\n")
    for name, by_distance in results.items():
        beyond = [acc for d, acc in by_distance.items() if d >= 2]
        print(f"{name}: accuracy {sum(by_distance.values()) / len(by_distance):.3f} overall, "
              f"{sum(beyond) / len(beyond):.3f} at 2+ segments back")
    return results


if __name__ == "__main__":
    main()
