"""The GPU session script is ready to run in one device call: it parses, quick's budget fits
8 minutes, a step that hangs is stopped at its bound and the summary still comes, the tarball
has its layout and size limit, the summary reads every step's result, and the test selections
select what they are meant to."""
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from benchmarks import gpu_summary, pack

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_session.sh"
TEXT = SCRIPT.read_text()
KERNEL_SUITES = [f"tests/test_kernels_{op}.py" for op in ("memory_read", "slot_attention", "memory_norm")]


def _variable(name: str) -> str:
    return re.search(rf'^{name}="([^"]+)"', TEXT, re.M).group(1)


def _array(name: str) -> list[str]:
    return re.search(rf"^{name}=\(([^)]*)\)", TEXT, re.M).group(1).split()


def _bash(commands: str, tmp_path, cwd=ROOT, **env) -> subprocess.CompletedProcess:
    """`commands` after sourcing the script (which then only defines its helpers)."""
    variables = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "LOGS": str(tmp_path / "logs"), **env}
    (tmp_path / "logs").mkdir(exist_ok=True)
    return subprocess.run(["bash", "-c", f"source {SCRIPT}; {commands}"], cwd=cwd, env=variables,
                          capture_output=True, text=True, timeout=120)


# Collects several selections in one process (each test module is imported once), printing
# {selection name: [node ids]} as JSON; MEMKERNELS_BENCH=quick for the op benchmarks, as quick runs them.
COLLECTOR = """
import json, os, sys
import pytest

class Items:
    def pytest_collection_finish(self, session):
        self.ids = [item.nodeid for item in session.items]

os.environ["MEMKERNELS_BENCH"] = "quick"
found = {}
for name, args in json.loads(sys.argv[1]).items():
    items = Items()
    code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", *args], plugins=[items])
    found[name] = items.ids if code == 0 else f"pytest exited with {code}"
print("COLLECTED " + json.dumps(found))
"""


@pytest.fixture(scope="module")
def collected() -> dict:
    """The node ids each of the script's test selections picks, from one collection."""
    cpu_only = [f"--ignore=tests/{name}" for name in _array("CPU_ONLY_TESTS")]
    selections = {name: [*KERNEL_SUITES, "-k", _variable(name)] for name in ("MEMCHECK_KERNELS", "RACECHECK_KERNELS")}
    selections["SANITIZE_FAST_PATHS"] = ["tests/test_cuda_fast_paths.py", "-k", _variable("SANITIZE_FAST_PATHS")]
    selections["FAST_PATH_TESTS"] = ["tests", *cpu_only, "-k", _variable("FAST_PATH_TESTS")]
    selections["QUICK_OPS"] = ["benchmarks/test_ops.py", "-k", _variable("QUICK_OPS")]
    run = subprocess.run([sys.executable, "-c", COLLECTOR, json.dumps(selections)], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    line = next((line for line in run.stdout.splitlines() if line.startswith("COLLECTED ")), None)
    assert line, run.stdout[-3000:] + run.stderr[-3000:]
    found = json.loads(line.removeprefix("COLLECTED "))
    for name, ids in found.items():
        assert isinstance(ids, list), (name, ids)
    return found


def test_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_quick_budget_table_is_the_scripts_and_fits_eight_minutes():
    rows = re.findall(r"^#\s+(\d(?:-\d)?)\s+([a-z-]+)\s+(\d+)\s", TEXT, re.M)
    table = {step: int(bound) for _, step, bound in rows}
    bounds = dict(re.findall(r"\[([a-z-]+)\]=(\d+)", re.search(r"declare -A QUICK_BOUND=\(([^)]*)\)", TEXT).group(1)))
    assert table == {step: int(b) for step, b in bounds.items()}
    phases: dict[str, int] = {}
    for phase, _, bound in rows:
        if "-" not in phase:
            phases[phase] = max(phases.get(phase, 0), int(bound))
    for phase, step, bound in rows:  # a step spanning phases ends within them
        if "-" in phase:
            first, last = map(int, phase.split("-"))
            assert int(bound) <= sum(phases[str(p)] for p in range(first, last + 1)), step
    total = sum(phases.values())
    assert re.search(r"phases 1 to (\d+)\s+(\d+)", TEXT).groups() == (str(len(phases)), str(total))
    seconds, reserve = (int(re.search(rf"^{n}=(\d+)", TEXT, re.M).group(1)) for n in ("QUICK_SECONDS", "QUICK_RESERVE"))
    assert seconds == 480 and total + reserve <= seconds, (total, reserve)


def test_a_step_past_its_bound_is_stopped_and_the_session_still_packs_its_summary(tmp_path):
    stub = ("stage_stub() { bounded hang 1 sleep 60; bounded fine 5 echo done; "
            "skip_step absent 'not on this machine'; }; run_stage stub")
    run = _bash(stub, tmp_path, OUT=str(tmp_path / "out"), GPU_SESSION_WORK=str(tmp_path / "work"))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line for line in run.stdout.splitlines() if line.startswith("| ")}
    assert re.search(r"\| timed out \| \d+ \| [12] \(1\) \| stopped at its bound of 1 s", rows["hang"]), rows["hang"]
    assert "| ok |" in rows["fine"] and "| done |" in rows["fine"]
    assert "| skipped |" in rows["absent"] and "not on this machine" in rows["absent"]
    assert run.stdout.rstrip().endswith(rows["absent"]), "the summary table is printed last"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["stub-summary.txt", "stub.tar.gz"]
    with tarfile.open(tmp_path / "out" / "stub.tar.gz") as tar:
        names = set(tar.getnames())
        assert {"stub/summary.txt", "stub/steps.tsv", "stub/hang.log", "stub/fine.log"} <= names, names
        assert tar.extractfile("stub/hang.log").read().decode().endswith("error: timed out after 1 s\n")


def test_pack_cuts_the_largest_logs_to_fit_its_limit(tmp_path):
    session = tmp_path / "quick"
    session.mkdir()
    (session / "summary.txt").write_text("| step | status |\n")
    (session / "ops.json").write_text(json.dumps({"benchmarks": []}))
    noise = "".join(f"{i:08x} {hash(str(i)) & 0xffffffff:08x}\n" for i in range(200_000))  # ~3.6 MB, compresses poorly
    (session / "tests.log").write_text("first line\n" + noise + "last line\n")
    (session / "trace.bin").write_bytes(bytes(range(256)) * 2000)
    cut = pack.pack(session, tmp_path / "quick.tar.gz", max_bytes=400_000)
    assert (tmp_path / "quick.tar.gz").stat().st_size <= 400_000
    assert cut and cut[0].startswith("tests.log")
    with tarfile.open(tmp_path / "quick.tar.gz") as tar:
        log = tar.extractfile("quick/tests.log").read().decode()
        assert log.startswith("first line") and log.endswith("last line\n") and "bytes cut by benchmarks.pack" in log
        assert json.loads(tar.extractfile("quick/ops.json").read()) == {"benchmarks": []}
        assert "tests.log" in tar.extractfile("quick/CUT.txt").read().decode()
    assert pack.pack(session, tmp_path / "whole.tar.gz", max_bytes=16 * 2**20) == []


def _write(folder: Path, name: str, text: str):
    (folder / name).write_text(text)


def test_summary_rows_from_the_logs_of_each_kind_of_step(tmp_path):
    logs = tmp_path / "quick"
    logs.mkdir()
    steps = [("build", 2, 120, 75, 0), ("tests", 80, 100, 100, 124), ("tests-fast-paths", 80, 100, 40, 1),
             ("memcheck", 181, 45, 30, 0), ("convergence", 181, 45, 20, 1), ("ops", 230, 125, 125, 124),
             ("claims", 356, 50, 41, 0)]
    _write(logs, "steps.tsv", "dispatch-rule\t400\t-\t0\tskipped\t-\tbenchmarks.dispatch_rule is not in this checkout\n"
           + "".join(f"{n}\t{t}\t{b}\t{s}\t{rc}\t{n}.log\t\n" for n, t, b, s, rc in steps))
    _write(logs, "info.txt", "CUDA extension built (memkernels._C)\nCUDA fast paths off (x); "
                             "tensor-core head dims built: 64, 128\n")
    _write(logs, "build.log", "building\n")
    _write(logs, "tests.log", "[gw0] [ 1%] PASSED tests/test_a.py::test_x\n[gw1] [ 2%] FAILED tests/test_a.py::test_y\n"
                              "[gw0] [ 3%] PASSED tests/test_b.py::test_z\nerror: timed out after 100 s\n")
    _write(logs, "tests-fast-paths.log", "pytest-xdist is not installed: 2 shards of files instead\n")
    _write(logs, "tests-fast-paths.shard-0.log", "== 2 failed, 10 passed, 3 skipped in 30.1s ==\n")
    _write(logs, "tests-fast-paths.shard-1.log", "== 5 passed in 9.0s ==\n")
    _write(logs, "memcheck.log", "========= ERROR SUMMARY: 0 errors\n")
    _write(logs, "convergence.log", "table\n")
    _write(logs, "convergence.json", json.dumps({
        "dtype": "bfloat16", "setting": {"steps": 100}, "reference_trained": True,
        "backends": {"triton": {"passed": True, "max_diff_over_bound": 0.12},
                     "cuda-fast": {"passed": False, "max_diff_over_bound": 3.5}}}))
    entry = {"group": "g", "extra_info": {"impl": "sdpa", "copy_GB_per_s": 4300.0, "matmul_TFLOP_per_s": 780.0,
                                          "matmul_dtype": "bfloat16"}}
    _write(logs, "ops.jsonl", json.dumps(entry) + "\n" + json.dumps(entry) + "\n")
    _write(logs, "ops.log", "..\n")
    _write(logs, "claims.log", "done\n")
    _write(logs, "claims.json", json.dumps({"memory": []}))  # no "speed": unreadable, said so in its row
    table = gpu_summary.table(logs)
    assert table[-1].startswith("| dispatch-rule |"), "rows in the order the steps started"
    rows = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]] for line in table[2:]}
    assert rows["build"] == ["ok", "2", "75 (120)",
                             "CUDA extension built (memkernels._C); tensor-core head dims built: 64, 128"]
    assert rows["tests"][0] == "timed out"
    assert rows["tests"][3] == "stopped at its bound of 100 s; 1 failed, 2 passed before it was stopped " \
                               "(from its per-test lines)"
    assert rows["tests-fast-paths"] == ["failed (exit 1)", "80", "40 (100)", "2 failed, 15 passed, 3 skipped"]
    assert rows["memcheck"][3] == "========= ERROR SUMMARY: 0 errors"
    assert rows["convergence"][3] == "bfloat16, 100 steps: triton pass (0.12 of bound), cuda-fast FAIL (3.50 of bound)"
    assert rows["ops"][3].startswith("stopped at its bound of 125 s; 2 entries (partial: the run was cut short)")
    assert "copy 4300 GB/s" in rows["ops"][3] and "780 TFLOP/s (bfloat16 matmul)" in rows["ops"][3]
    assert rows["claims"][3].startswith("could not read its result: IndexError")
    assert rows["dispatch-rule"] == ["skipped", "400", "0 (-)", "benchmarks.dispatch_rule is not in this checkout"]
    _write(logs, "claims.json", json.dumps({
        "memory": [{"memory_size": 1024}, {"memory_size": 2048}], "speed": {"memformer_memory": 1024},
        "memory_ratio_at_max": 1.3, "speed_ratio": 0.68, "mrbp_memory_ratio": 0.61, "mrbp_speed": 0.66}))
    claims_row = next(line for line in gpu_summary.table(logs) if line.startswith("| claims |"))
    assert "TXL/Memformer memory 1.30x at 2048; Memformer/TXL tokens/s 0.68x at 1024; " \
           "MRBP/BPTT memory 0.61, speed x0.66 at horizon 4" in claims_row


def test_every_step_has_a_result_reader():
    code = "\n".join(line for line in TEXT.splitlines() if not line.lstrip().startswith("#"))
    steps = set(re.findall(r"(?<![\w-])(?:bounded|sanitizer|skip_step) ([a-z][a-z-]*) ", code))
    assert {"build", "tests", "tests-fast-paths", "memcheck-fast-paths", "ops", "claims", "dispatch-rule"} <= steps
    assert all(step.split("-")[0] in gpu_summary.RESULTS for step in steps), steps


def test_parallel_pytest_without_xdist_runs_shards_of_files_and_the_summary_adds_them_up(tmp_path):
    tests = tmp_path / "tests"
    tests.mkdir()
    for name, body in (("a", "assert True"), ("b", "assert False"), ("c", "assert True"), ("d", "assert True")):
        (tests / f"test_{name}.py").write_text(f"def test_{name}():\n    {body}\n")
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / "xdist.py").write_text("raise ImportError('hidden by the test')\n")
    run = _bash("parallel_pytest 2 tests --ignore=tests/test_d.py -q -p no:cacheprovider", tmp_path, cwd=tmp_path,
                PYTHONPATH=str(hidden), PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", STEP="tests")
    assert "shards of files instead" in run.stdout and run.returncode == 1, run.stdout + run.stderr
    logs = tmp_path / "logs"
    assert sorted(p.name for p in logs.iterdir()) == ["tests.shard-0.log", "tests.shard-1.log"]
    (logs / "tests.log").write_text(run.stdout)
    step = {"name": "tests", "status": "1", "log": "tests.log", "bound": "9", "note": ""}
    assert gpu_summary.result(logs, step) == "1 failed, 2 passed"


def test_sanitizer_selections_select_small_gpu_kernel_tests(collected):
    for name in ("MEMCHECK_KERNELS", "RACECHECK_KERNELS"):
        selected = collected[name]
        assert selected and all("cuda" in line for line in selected), (name, selected)
        for op in ("memory_read", "slot_attention", "memory_norm"):
            assert any(op in line for line in selected), (name, op)
    for op in ("memory_read", "slot_attention", "memory_norm"):
        assert any(op in line for line in collected["SANITIZE_FAST_PATHS"]), op
    strided = [line for line in collected["SANITIZE_FAST_PATHS"] if "memory_read_strided_inputs" in line]
    assert len(strided) == 2 and all("bfloat16" in line for line in strided), strided  # fast paths off and on


def test_quick_test_selections(collected):
    """The fast-path pass takes every kernel and op suite's CUDA cases and the fast-path tests; the
    CPU-only files quick leaves out exist, and the suites the issue names are not among them."""
    cpu_only = _array("CPU_ONLY_TESTS")
    assert all((ROOT / "tests" / name).is_file() for name in cpu_only), cpu_only
    for needed in ("test_kernels_memory_read.py", "test_cuda_bad_inputs.py", "test_streaming.py",
                   "test_cuda_fast_paths.py", "test_memory_read.py", "test_cuda_extension.py"):
        assert needed not in cpu_only
    selected = collected["FAST_PATH_TESTS"]
    files = {line.split("::")[0] for line in selected}
    assert {*KERNEL_SUITES, "tests/test_cuda_fast_paths.py", "tests/test_memory_read.py",
            "tests/test_slot_attention.py", "tests/test_memory_norm.py"} <= files, files
    assert all("cuda" in line or "autocast" in line or "grouped" in line for line in selected)
    assert any("peaked_softmax" in line for line in selected)


def test_quick_op_benchmarks_take_every_implementation_but_the_eager_composite(collected):
    impls = {re.search(r"\d-([a-z-]+)-fwd", line).group(1) for line in collected["QUICK_OPS"]}
    # What a CPU has; a GPU adds its backends and peers. The dispatch rule ranks memkernels-torch.
    assert "eager" not in impls and {"memkernels-torch", "compiled", "sdpa", "normalize"} <= impls, impls


@pytest.mark.parametrize("stage", ["quick", "tests", "ops", "claims"])
def test_every_stage_has_a_function(stage):
    assert re.search(rf"^stage_{stage}\(\)", TEXT, re.M)
