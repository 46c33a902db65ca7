"""Every malformed input, at every entry point and backend, is a clear error, never a crash.

The cases (tests/bad_inputs.py) run in a subprocess that reports each one; a case that kills
the process fails on its own, and the rest run on in a fresh process. Each must raise a
TypeError, ValueError or RuntimeError whose message names the offending argument. The
CUDA extension's own registered ops are checked the same way in tests/test_cuda_extension.py.
"""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import bad_inputs

RUNNER = Path(bad_inputs.__file__)
CASES = bad_inputs.cases()


@pytest.fixture(scope="module")
def outcomes():
    """{case id: the runner's report}; a crashed case reports how the process ended."""
    results, first = {}, 0
    while first < len(CASES):
        run = subprocess.run([sys.executable, str(RUNNER), str(first)], capture_output=True, text=True,
                             timeout=1800)
        lines = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
        for line in lines:
            results[line["id"]] = line
        if run.returncode == 0:
            break
        last = lines[-1] if lines else {"index": first, "id": CASES[first][0], "status": "start"}
        results[last["id"]] = {"status": "crashed", "returncode": run.returncode, "stderr": run.stderr[-2000:]}
        first = last["index"] + 1
    return results


@pytest.mark.parametrize("case_id,argument", [(case_id, arg) for case_id, arg, _ in CASES])
def test_bad_input_is_a_clear_error(outcomes, case_id, argument):
    outcome = outcomes.get(case_id)
    assert outcome is not None, "the runner never reached this case"
    assert outcome["status"] != "crashed", f"the process died (return code {outcome['returncode']}): " \
                                           f"{outcome['stderr']}"
    assert outcome["status"] == "raised", "the malformed input was accepted"
    assert outcome["type"] in ("TypeError", "ValueError", "RuntimeError", "BackendUnavailable"), outcome
    assert re.search(rf"\b{re.escape(argument)}\b", outcome["message"]), \
        f"the message does not name {argument!r}: {outcome['message']}"


def test_launches_beyond_the_cuda_grid_are_refused():
    from memkernels.triton_kernels._launch import MAX_GRID, check_grid

    assert check_grid(MAX_GRID) == MAX_GRID
    with pytest.raises(ValueError, match="exceed CUDA's grid limit"):
        check_grid(MAX_GRID + 1)
