"""The build switches of the CUDA extension and the ptxas check behind `make ptxas`."""
import subprocess
import sys

import pytest

from memkernels import _cuda_build

PTXAS_LOG = """\
ptxas info    : Compiling entry function '_Z4fastv' for 'sm_90'
ptxas info    : Function properties for _Z4fastv
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 168 registers, used 1 barriers, 32 bytes smem
ptxas info    : Compiling entry function '_Z5spillv' for 'sm_80'
ptxas info    : Function properties for _Z5spillv
    104 bytes stack frame, 136 bytes spill stores, 144 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers
"""


@pytest.fixture
def cutlass_found(monkeypatch, tmp_path):
    (tmp_path / "cute").mkdir()
    monkeypatch.setenv("MEMKERNELS_CUTLASS_INCLUDE", str(tmp_path))


@pytest.mark.parametrize("raw,dims", [("", (64, 128)), ("none", ()), ("64", (64,)), ("256, 64", (64, 256)),
                                      ("64,128,256", (64, 128, 256))])
def test_head_dims_switch(cutlass_found, monkeypatch, raw, dims):
    monkeypatch.setenv("MEMKERNELS_HEAD_DIMS", raw)
    assert _cuda_build.head_dims() == dims
    flags = _cuda_build.nvcc_flags()
    assert [f for f in flags if f.startswith("-DMEMKERNELS_TC_HDIM")] == [f"-DMEMKERNELS_TC_HDIM{d}" for d in dims]
    instances = [s for s in _cuda_build.sources() if "_hdim" in s]
    assert {int(s.split("_hdim")[1].split("_")[0]) for s in instances} == set(dims)


def test_unknown_head_dim_is_refused(cutlass_found, monkeypatch):
    monkeypatch.setenv("MEMKERNELS_HEAD_DIMS", "64,96")
    with pytest.raises(ValueError, match="MEMKERNELS_HEAD_DIMS='64,96': \\[96\\] not among"):
        _cuda_build.head_dims()


def test_without_cute_headers_only_scalar_kernels_build(monkeypatch, tmp_path):
    monkeypatch.setenv("MEMKERNELS_CUTLASS_INCLUDE", str(tmp_path))  # no cute/ there
    monkeypatch.setenv("MEMKERNELS_HEAD_DIMS", "64,128")
    assert _cuda_build.cutlass_include() is None
    assert _cuda_build.head_dims() == ()
    assert not [s for s in _cuda_build.sources() if "_hdim" in s]


def test_ptxas_table_reads_registers_and_spills():
    rows = _cuda_build.ptxas_table(PTXAS_LOG)
    assert rows == [
        {"kernel": "_Z4fastv", "arch": "sm_90", "spill_stores": 0, "spill_loads": 0, "registers": 168,
         "static_smem": 32},
        {"kernel": "_Z5spillv", "arch": "sm_80", "spill_stores": 136, "spill_loads": 144, "registers": 255,
         "static_smem": 0},
    ]


@pytest.mark.parametrize("log,code", [(PTXAS_LOG, 1), (PTXAS_LOG.split("ptxas info    : Compiling entry function "
                                                                     "'_Z5spillv'")[0], 0), ("", 1)])
def test_ptxas_check_fails_on_spills_or_an_empty_log(tmp_path, log, code):
    path = tmp_path / "build.log"
    path.write_text(log)
    run = subprocess.run([sys.executable, "-m", "memkernels._cuda_build", "--ptxas-table", str(path)],
                         capture_output=True, text=True)
    assert run.returncode == code, run.stderr
    if code and log:
        assert "spill" in run.stderr
