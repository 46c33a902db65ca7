"""The convergence check: its tolerance logic, and Triton training like the reference on the CPU.

The GPU check (100 bfloat16 steps per fused backend, `gpu_session.sh quick`) uses the same
code; here a tiny model trains two float32 steps with every fused backend the CPU runs (Triton
under the interpreter, sdpa) beside the torch reference (about 10 s on a loaded 2-core
machine, most of it the interpreter).
"""
import math
import os

import pytest
import torch

from benchmarks import convergence
from benchmarks.convergence import Tolerance, compare, trained

TOL = Tolerance(atol=0.01, rtol=0.1)


def test_a_run_within_the_bound_at_every_step_passes():
    outcome = compare([4.0, 3.0, 2.0], [4.0, 3.3, 1.8], TOL)  # bounds 0.41, 0.31, 0.21
    assert outcome["passed"] and outcome["first_failing_step"] is None
    assert outcome["worst_step"] == 1 and math.isclose(outcome["max_abs_diff"], 0.3)
    assert math.isclose(outcome["max_diff_over_bound"], 0.3 / 0.31)


def test_one_step_past_its_bound_fails_there():
    outcome = compare([4.0, 3.0, 2.0], [4.0, 3.0, 2.0 + 0.22], TOL)
    assert not outcome["passed"] and outcome["first_failing_step"] == 2 and outcome["max_diff_over_bound"] > 1


def test_the_bound_grows_with_the_reference_loss():
    assert not compare([1.0], [1.15], TOL)["passed"]
    assert compare([10.0], [10.15], TOL)["passed"]


@pytest.mark.parametrize("losses", [[4.0, math.nan, 2.0], [4.0, math.inf, 2.0], [4.0, 3.0]],
                         ids=["nan", "inf", "stopped early"])
def test_nan_inf_or_a_short_run_never_passes(losses):
    outcome = compare([4.0, 3.0, 2.0], losses, TOL)
    assert not outcome["passed"] and outcome["first_failing_step"] in (1, 2)


def test_the_reference_must_have_trained():
    assert trained([4.0, 3.9]) and not trained([4.0, 4.0]) and not trained([4.0])


def test_batches_repeat_the_payload_after_the_fillers():
    setting = convergence.GPU
    tokens = convergence.batch(setting, step=3, device="cpu")
    L = setting.segment_len
    assert tokens.shape == (setting.batch, setting.segments * L + 1)
    assert torch.equal(tokens[:, :L], tokens[:, 2 * L:3 * L]) and not torch.equal(tokens[:, :L], tokens[:, L:2 * L])
    assert torch.equal(tokens, convergence.batch(setting, step=3, device="cpu"))


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                    reason="runs Triton on the CPU under TRITON_INTERPRET=1 (set by tests/conftest.py without a GPU); "
                           "on a GPU, gpu_session.sh quick runs the bfloat16 check")
def test_every_fused_backend_trains_like_the_reference_on_the_cpu():
    cpu = torch.device("cpu")
    backends = convergence.fused_backends(cpu, torch.float32, head_dim=8)
    assert "triton" in backends and "cuda" not in backends, backends
    result = convergence.run(convergence.TINY, backends, cpu, torch.float32)
    assert result["reference_trained"], result["reference"]
    for backend in backends:
        outcome = result["backends"][backend]
        assert outcome["passed"] and len(outcome["losses"]) == convergence.TINY.steps, convergence.table(result)
