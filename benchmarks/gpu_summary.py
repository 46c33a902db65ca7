"""The summary of a GPU session: `python -m benchmarks.gpu_summary LOG_DIR` prints summary.txt.

Device, driver, torch / triton / CUDA versions, date and commit; then a table with one row per
step that `benchmarks/gpu_session.sh` ran, in the order they started, from LOG_DIR/steps.tsv
(its `bounded` and `skip_step` helpers write one line per step: name, second it started at,
bound in seconds, seconds taken, exit status or "skipped", log file, note). A row says the
step's status (ok, failed, timed out, skipped), when it started, its time against its bound,
and its result, read from what the step wrote: the pytest counts (summed over every summary
line of its log and of its shards' logs, NAME.shard-N.log, where pytest-xdist was missing),
the sanitizer's error summary, the op benchmark's entries and the ceilings it measured, the
claims' headline ratios, the convergence verdict per backend, the dispatch rule. Committed
with the session's results under benchmarks/results/<device>/. A result that cannot be read
says why instead of stopping the summary.
"""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

import memkernels
from benchmarks.claims import git_commit

TIMED_OUT = (124, 137)
PYTEST_COUNT = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|deselected)\b")
PYTEST_SUMMARY = re.compile(r"^\W*\d+ (passed|failed|errors?|skipped|xfailed|xpassed|deselected)\b.* in [\d.]+s")
PER_TEST = re.compile(r"\b(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")
PER_TEST_OUTCOME = {"PASSED": "passed", "FAILED": "failed", "ERROR": "error", "SKIPPED": "skipped", "XFAIL": "xfailed",
                    "XPASS": "xpassed"}


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.is_file() else ""


def pytest_counts(log: str) -> str:
    """"N failed, M passed, ..." summed over every pytest summary line of the log; for a run
    stopped before its summary, counted from its per-test lines (pytest -v)."""
    totals: dict[str, int] = {}
    for line in log.splitlines():
        if PYTEST_SUMMARY.search(line):
            for count, outcome in PYTEST_COUNT.findall(line):
                outcome = "error" if outcome.startswith("error") else outcome
                totals[outcome] = totals.get(outcome, 0) + int(count)
    partial = ""
    if not totals:
        for line in log.splitlines():
            if "::" in line and (match := PER_TEST.search(line)):
                outcome = PER_TEST_OUTCOME[match.group(1)]
                totals[outcome] = totals.get(outcome, 0) + 1
        partial = " before it was stopped (from its per-test lines)"
    if not totals:
        return "no test outcome in the log" + (" (no tests ran)" if "no tests ran" in log else "")
    order = ("failed", "error", "passed", "skipped", "xfailed", "xpassed", "deselected")
    return ", ".join(f"{totals[o]} {o}" for o in order if o in totals) + partial


def _last_line(log: str, pattern: str, missing: str) -> str:
    lines = [line.strip() for line in log.splitlines() if re.search(pattern, line)]
    return lines[-1] if lines else missing


def _build(logs: Path, log: str) -> str:
    info = _text(logs / "info.txt")
    extension = _last_line(info, r"^CUDA extension", "no info.txt")
    if not extension.startswith("CUDA extension built"):
        return f"{extension}; {_last_line(log, r'error', 'no error line in the build log')}"
    head_dims = _last_line(info, r"tensor-core head dims built", "")
    return extension + (f"; {head_dims.split('; ')[-1]}" if head_dims else "")


def _ops(logs: Path, log: str) -> str:
    from benchmarks.report import ceilings, load

    path = logs / "ops.json" if (logs / "ops.json").is_file() else logs / "ops.jsonl"
    if not path.is_file():
        return "no entries written; " + _last_line(log, r"\S", "empty log")
    report = load(str(path))
    benches = report["benchmarks"]
    partial = " (partial: the run was cut short)" if report.get("partial") else ""
    return f"{len(benches)} entries{partial}; {pytest_counts(log)}; {ceilings(benches)}"


def _claims(logs: Path, log: str) -> str:
    path = logs / "claims.json"
    if not path.is_file():
        return "no claims.json; " + _last_line(log, r"Error|error", _last_line(log, r"\S", "empty log"))
    s = json.loads(path.read_text())
    largest, speed_at = s["memory"][-1]["memory_size"], s["speed"]["memformer_memory"]
    return (f"TXL/Memformer memory {s['memory_ratio_at_max']:.2f}x at {largest}; Memformer/TXL tokens/s "
            f"{s['speed_ratio']:.2f}x at {speed_at}; MRBP/BPTT memory {s['mrbp_memory_ratio']:.2f}, "
            f"speed x{s['mrbp_speed']:.2f} at horizon 4")


def _convergence(logs: Path, log: str) -> str:
    path = logs / "convergence.json"
    if not path.is_file():
        return "no convergence.json; " + _last_line(log, r"Error|error", _last_line(log, r"\S", "empty log"))
    result = json.loads(path.read_text())
    verdicts = []
    for label, b in result["backends"].items():
        if b["passed"] is None:
            verdicts.append(f"{label} skipped")
        else:
            verdicts.append(f"{label} {'pass' if b['passed'] else 'FAIL'} ({b['max_diff_over_bound']:.2f} of bound)")
    trained = "" if result["reference_trained"] else "; the reference's loss did not fall"
    return f"{result['dtype']}, {result['setting']['steps']} steps: " + ", ".join(verdicts) + trained


def _dispatch_rule(logs: Path, log: str) -> str:
    written = sorted(p.name for p in logs.glob("dispatch_rule*") if p.suffix != ".log")
    return ("wrote " + ", ".join(written)) if written else _last_line(log, r"\S", "nothing written")


def _sanitizer(logs: Path, log: str) -> str:
    return _last_line(log, r"ERROR SUMMARY|RACECHECK SUMMARY", "no sanitizer summary line")


def _pytest(logs: Path, log: str) -> str:
    return pytest_counts(log)


# Step name (its prefix before any "-") -> what its result line is read from.
RESULTS = {"build": _build, "tests": _pytest, "warm": _pytest, "memcheck": _sanitizer, "racecheck": _sanitizer,
           "ops": _ops, "overhead": _pytest, "claims": _claims, "convergence": _convergence, "dispatch": _dispatch_rule}


def read_steps(logs: Path) -> list[dict]:
    steps = []
    for line in _text(logs / "steps.tsv").splitlines():
        name, start, bound, seconds, status, log, *note = line.split("\t")
        steps.append({"name": name, "start": int(start), "bound": bound, "seconds": seconds, "status": status,
                      "log": log, "note": note[0] if note else ""})
    return sorted(steps, key=lambda step: step["start"])


def status(step: dict) -> str:
    if step["status"] == "skipped":
        return "skipped"
    rc = int(step["status"])
    return "ok" if rc == 0 else "timed out" if rc in TIMED_OUT else f"failed (exit {rc})"


def result(logs: Path, step: dict) -> str:
    if step["status"] == "skipped":
        return step["note"]
    shards = sorted(logs.glob(f"{step['name']}.shard-*.log"))
    log = "\n".join(_text(path) for path in [logs / step["log"], *shards])
    read = RESULTS.get(step["name"].split("-")[0], lambda logs, log: _last_line(log, r"\S", "empty log"))
    try:
        line = read(logs, log)
    except Exception as error:  # a malformed result file must not cost the rest of the summary
        line = f"could not read its result: {type(error).__name__}: {error}"
    if status(step) == "timed out":
        line = f"stopped at its bound of {step['bound']} s; " + line
    return line.replace("|", "/")


def table(logs: Path) -> list[str]:
    lines = ["| step | status | started at s | seconds (bound) | result |", "|---|---|---|---|---|"]
    for step in read_steps(logs):
        lines.append(f"| {step['name']} | {status(step)} | {step['start']} | {step['seconds']} ({step['bound']}) "
                     f"| {result(logs, step)} |")
    return lines


def _driver() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _commit() -> str:
    """MEMKERNELS_COMMIT, else git, else .whl/COMMIT (written by `make gpu-wheels`, for a copy with no .git)."""
    if commit := os.environ.get("MEMKERNELS_COMMIT"):
        return commit
    if (commit := git_commit()) != "unknown":
        return commit
    carried = Path(".whl/COMMIT")
    return f"{carried.read_text().strip()} (from .whl/COMMIT, as of make gpu-wheels)" if carried.is_file() else commit


def summary(logs: Path) -> str:
    import triton

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
    return "\n".join([
        f"device      {device}",
        f"driver      {_driver()}",
        f"torch       {torch.__version__} (CUDA {torch.version.cuda})",
        f"triton      {triton.__version__}",
        f"memkernels  {memkernels.__version__}",
        f"date        {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}",
        f"commit      {_commit()}",
        f"session     {logs.name}",
        "",
        *table(logs),
    ])


if __name__ == "__main__":
    print(summary(Path(sys.argv[1])))
