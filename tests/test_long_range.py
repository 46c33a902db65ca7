"""The long-range tasks put the answer where they say, and memory helps on them."""
import pytest
import torch

from memkernels.examples import long_range
from memkernels.examples.tasks import QUERY, SOURCE, TaskSpec, make_batch

SPEC = TaskSpec()


@pytest.mark.parametrize("task", ["copy", "recall", "brackets"])
def test_answers_lie_distance_segments_back(task):
    distances = torch.tensor([1, 2, 3, 4])
    tokens, answer = make_batch(task, SPEC, 4, distances, torch.Generator().manual_seed(0))
    L, S = SPEC.segment_len, SPEC.n_segments
    assert tokens.shape == (4, S * L + 1) and answer.shape == (4, S * L)
    first_symbol = 3 + SPEC.n_filler
    for b, distance in enumerate(distances.tolist()):
        source = (S - 1 - distance) * L
        assert tokens[b, source] == SOURCE and tokens[b, (S - 1) * L] == QUERY
        assert (tokens[b, :source] < first_symbol).all(), "nothing to remember before the source"
        scored = answer[b].nonzero().flatten() + 1  # positions in `tokens` of the scored targets
        assert (scored > (S - 1) * L).all(), "only the last segment is scored"
        answers = tokens[b, scored]
        remembered = tokens[b, source + 1:source + 1 + 2 * SPEC.payload]
        if task == "copy":
            assert torch.equal(answers, remembered[:SPEC.payload])
        elif task == "recall":
            key = tokens[b, scored - 1]
            pairs = remembered.view(-1, 2)
            assert torch.equal(answers, pairs[pairs[:, 0] == key, 1])
        else:
            half = SPEC.n_symbols // 2
            assert torch.equal(answers - half, remembered[:SPEC.payload].flip(0))


def test_unknown_task_is_rejected():
    with pytest.raises(ValueError, match="task must be one of"):
        make_batch("sort", SPEC, 1, torch.tensor([1]))


def test_quick_copy_memformer_beats_the_no_memory_model(tmp_path, capsys):
    plot = tmp_path / "copy.png"
    models = ["memformer", "txl-1-segment", "no-memory"]
    results = long_range.main(["--tasks", "copy", "--models", *models, "--quick", "--jobs", "1",
                                "--plot", str(plot)])["copy"]
    far = {name: sum(acc for d, acc in r.items() if d >= 2) / (SPEC.n_segments - 2) for name, r in results.items()}
    assert far["memformer"] > far["no-memory"] + 0.3, far
    assert far["no-memory"] < 0.3 and far["txl-1-segment"] < 0.3, far
    assert plot.stat().st_size > 0 and (tmp_path / "copy_loss.png").stat().st_size > 0
    last_lines = capsys.readouterr().out.strip().splitlines()[-3:]
    assert [line.split(":")[0] for line in last_lines] == [f"copy {name}" for name in models]


def test_every_model_and_task_runs_through_the_example(tmp_path, capsys):
    """Two training steps each for the new memory models: the pipeline, tables and plots, not learning."""
    plot = tmp_path / "lr.png"
    results = long_range.main(["--tasks", "recall", "brackets", "--models", "kv-memory", "dnc", "--quick",
                               "--steps", "2", "--jobs", "1", "--plot", str(plot)])
    assert set(results) == {"recall", "brackets"}
    for by_model in results.values():
        assert set(by_model) == {"kv-memory", "dnc"}
        assert all(0 <= acc <= 1 for r in by_model.values() for acc in r.values())
    out = capsys.readouterr().out
    assert out.count("answer loss by sequence length in tokens") == 2
    assert "     16     24     40     64" in out
    assert plot.stat().st_size > 0 and (tmp_path / "lr_loss.png").stat().st_size > 0


def test_a_run_does_not_depend_on_the_other_runs_asked_for(tmp_path):
    alone = long_range.main(["--tasks", "copy", "--models", "kv-memory", "--quick", "--steps", "2",
                             "--jobs", "1", "--plot", str(tmp_path / "a.png")])
    together = long_range.main(["--tasks", "copy", "--models", "no-memory", "kv-memory", "--quick", "--steps", "2",
                                "--jobs", "1", "--plot", str(tmp_path / "b.png")])
    assert alone["copy"]["kv-memory"] == together["copy"]["kv-memory"]
