"""Every malformed input to the CUDA extension's registered ops is a clear error, never a crash.

The cases (tests/cuda_bad_inputs.py) call `torch.ops.memkernels.*_cuda_*` with one bad
argument each, in a subprocess that reports each case; a case that kills the process fails on
its own, and the rest run on in a fresh process. The ops check every argument before they ask
for CUDA tensors, so without a GPU the cases run on CPU tensors and still reach every check
(on a GPU they run on CUDA tensors). Each must raise a RuntimeError naming the argument and
saying what was expected.
"""
import json
import re
import subprocess
import sys
from pathlib import Path

import cuda_bad_inputs
import pytest

from utils import needs_extension

pytestmark = needs_extension

RUNNER = Path(cuda_bad_inputs.__file__)
CASES = cuda_bad_inputs.cases()


@pytest.fixture(scope="module")
def outcomes():
    """{case id: the runner's report}; a crashed case reports how the process ended."""
    results, first = {}, 0
    while first < len(CASES):
        run = subprocess.run([sys.executable, str(RUNNER), str(first)], capture_output=True, text=True,
                             timeout=600)
        lines = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
        for line in lines:
            results[line["id"]] = line
        if run.returncode == 0:
            break
        last = lines[-1] if lines else {"index": first, "id": CASES[first][0], "status": "start"}
        results[last["id"]] = {"status": "crashed", "returncode": run.returncode, "stderr": run.stderr[-2000:]}
        first = last["index"] + 1
    return results


def test_case_ids_are_unique():
    ids = [case_id for case_id, _, _ in CASES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("case_id,argument", [(case_id, arg) for case_id, arg, _ in CASES])
def test_malformed_input_is_a_clear_error(outcomes, case_id, argument):
    outcome = outcomes.get(case_id)
    assert outcome is not None, "the runner never reached this case"
    assert outcome["status"] != "crashed", f"the process died (return code {outcome['returncode']}): " \
                                           f"{outcome['stderr']}"
    assert outcome["status"] == "raised", "the malformed input was accepted"
    assert outcome["type"] == "RuntimeError", outcome
    message = outcome["message"]
    assert message.startswith("memkernels::") or "_cuda_" in message.split(":")[0], message
    named = re.search(rf"(^|[\s:(]){re.escape(argument)}\b", message)
    assert named, f"the message does not name {argument!r}: {message}"
    assert "expected" in message or "must be a CUDA tensor" in message, message
