"""How the CUDA extension is built: by setup.py ahead of time, or here just in time.

`sources()`, `cxx_flags()` and `nvcc_flags()` describe the build for both paths;
setup.py loads this file on its own (no package import) to use them.

Build switches (environment variables, read at build time):

* `MEMKERNELS_HEAD_DIMS`: the head-dim buckets of the tensor-core attention
  kernels, a comma-separated subset of 64,128,256 (default 64,128; `none`
  builds the scalar kernels only). Each bucket serves every head dim up to it
  that is a multiple of 8; larger head dims take the scalar kernels. 256 is
  opt-in: its kernels spill registers with the present 4-warp tiles (ptxas,
  csrc/NOTES.md), and it adds a third of the build time. Fewer buckets build faster.
* `TORCH_CUDA_ARCH_LIST`: the architectures (torch's own switch; setup.py
  defaults it to "8.0;9.0"). `TORCH_CUDA_ARCH_LIST=9.0 MEMKERNELS_HEAD_DIMS=64`
  is the quickest useful build.
* `MEMKERNELS_CUTLASS_INCLUDE`: a directory holding cute/ and cutlass/, instead
  of the headers of the pinned `nvidia-cutlass` package. Without either, the
  extension builds the scalar kernels only and says so.
* `MEMKERNELS_PTXAS_VERBOSE=1`: ptxas reports registers, spills and shared
  memory of every kernel in the build log (`python -m memkernels._cuda_build
  --ptxas-table LOG` turns that into csrc/NOTES.md's table, and exits 1 if
  any kernel spills; `make ptxas` does both).

`load()` is the JIT fallback for a source checkout installed without the
extension (MEMKERNELS_CUDA=0, or built where nvcc was missing): it compiles
once into torch's extension cache (TORCH_EXTENSIONS_DIR) and imports the
module, which registers the same `memkernels::*_cuda_*` ops as
`memkernels._C`. Nothing here runs at import.
"""
import functools
import glob
import importlib.util
import os
import re
import sys

ALL_HEAD_DIMS = (64, 128, 256)
DEFAULT_HEAD_DIMS = (64, 128)
_CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")
_INSTANCE = re.compile(r"tc_\w+_hdim(\d+)_\w+\.cu$")


def cutlass_include() -> str | None:
    """The directory with cute/ and cutlass/: $MEMKERNELS_CUTLASS_INCLUDE, else the headers
    of the installed nvidia-cutlass package (found without importing it), else None."""
    override = os.environ.get("MEMKERNELS_CUTLASS_INCLUDE")
    if override:
        return override if os.path.isdir(os.path.join(override, "cute")) else None
    spec = importlib.util.find_spec("cutlass_library")
    for root in (spec.submodule_search_locations or []) if spec else []:
        include = os.path.join(root, "source", "include")
        if os.path.isdir(os.path.join(include, "cute")):
            return include
    return None


def head_dims() -> tuple[int, ...]:
    """The tensor-core head-dim buckets to build: MEMKERNELS_HEAD_DIMS, none without CuTe."""
    if cutlass_include() is None:
        return ()
    raw = os.environ.get("MEMKERNELS_HEAD_DIMS", "").strip().lower()
    if not raw:
        return DEFAULT_HEAD_DIMS
    if raw == "none":
        return ()
    dims = tuple(sorted({int(d) for d in raw.split(",") if d.strip()}))
    unknown = [d for d in dims if d not in ALL_HEAD_DIMS]
    if unknown:
        raise ValueError(f"MEMKERNELS_HEAD_DIMS={raw!r}: {unknown} not among {ALL_HEAD_DIMS}")
    return dims


def sources() -> list[str]:
    """Every kernel .cu (the tensor-core instantiations of the selected buckets only) and the
    host .cpp files (checks, bindings)."""
    selected = set(head_dims())
    kernels = []
    for path in sorted(glob.glob(os.path.join(_CSRC, "*.cu"))):
        instance = _INSTANCE.search(os.path.basename(path))
        if instance is None or int(instance.group(1)) in selected:
            kernels.append(path)
    return kernels + sorted(glob.glob(os.path.join(_CSRC, "*.cpp")))


def include_dirs() -> list[str]:
    cutlass = cutlass_include()
    return [_CSRC] + ([cutlass] if cutlass else [])


def nvcc_flags() -> list[str]:
    """No -std flag: torch's cpp_extension adds the standard its headers need (C++17 on older
    torch, C++20 on newer); the kernels are valid in both. No --use_fast_math: expf / logf
    accuracy matters for lse. CuTe needs relaxed constexpr and the half/bfloat16 operators that
    torch's default flags switch off (the -U flags come after torch's -D flags)."""
    flags = ["-O3", "-lineinfo", "--expt-relaxed-constexpr",
             "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
             "-U__CUDA_NO_HALF2_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__"]
    flags += [f"-DMEMKERNELS_TC_HDIM{d}" for d in head_dims()]
    if os.environ.get("MEMKERNELS_PTXAS_VERBOSE") == "1":
        flags.append("-Xptxas=-v")
    return flags


def cxx_flags() -> list[str]:
    """Host flags. torch's headers may include cusparse.h etc., which CUDA 13 wheels ship in
    site-packages' nvidia/cu13/include: searched after the toolkit's own include dir
    (-idirafter), whose cuda_runtime_api.h must win over the wheel's copy.
    """
    dirs = []
    for entry in sys.path:
        candidate = os.path.join(entry, "nvidia", "cu13", "include")
        if os.path.isdir(candidate) and candidate not in dirs:
            dirs.append(candidate)
    return ["-O3"] + [f"-idirafter{d}" for d in dirs]


@functools.cache
def load(verbose: bool = False):
    """Build (if needed) and import the extension as `memkernels_C`; returns the module.

    Returns `memkernels._C` instead when that imports (loading both would
    register the ops twice).

    Raises RuntimeError naming the missing piece when csrc/ is absent (installed
    from a wheel) or no CUDA toolkit is found.
    """
    try:  # the installed extension registers the same ops: never load both
        import memkernels._C as built

        return built
    except ImportError:
        pass
    if not os.path.isfile(os.path.join(_CSRC, "bindings.cpp")):
        raise RuntimeError(f"memkernels: cannot JIT-build the CUDA extension: no sources in {_CSRC}")
    if "CUDA_HOME" not in os.environ and os.path.exists("/usr/local/cuda/bin/nvcc"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"  # before cpp_extension reads it
    if "TORCH_CUDA_ARCH_LIST" not in os.environ:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
    from torch.utils import cpp_extension

    if cpp_extension.CUDA_HOME is None:
        raise RuntimeError("memkernels: cannot JIT-build the CUDA extension: no CUDA toolkit (set CUDA_HOME)")
    return cpp_extension.load(
        name="memkernels_C",
        sources=sources(),
        extra_include_paths=include_dirs(),
        extra_cflags=cxx_flags(),
        extra_cuda_cflags=nvcc_flags(),
        verbose=verbose,
    )


_PTXAS_ENTRY = re.compile(r"Compiling entry function '(\S+)' for '(sm_\d+)'")
_PTXAS_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_USED = re.compile(r"Used (\d+) registers(?:, used \d+ barriers)?(?:, (\d+) bytes smem)?")


def ptxas_table(log: str) -> list[dict]:
    """Rows {kernel, arch, registers, spill_stores, spill_loads, static_smem} from a build log
    written with MEMKERNELS_PTXAS_VERBOSE=1 (mangled kernel names, one row per entry and arch)."""
    rows, current = [], None
    for line in log.splitlines():
        if entry := _PTXAS_ENTRY.search(line):
            current = {"kernel": entry.group(1), "arch": entry.group(2)}
        elif current and (spill := _PTXAS_SPILL.search(line)):
            current["spill_stores"], current["spill_loads"] = int(spill.group(2)), int(spill.group(3))
        elif current and (used := _PTXAS_USED.search(line)):
            current["registers"] = int(used.group(1))
            current["static_smem"] = int(used.group(2) or 0)
            rows.append(current)
            current = None
    return rows


def _demangled(name: str) -> str:
    import subprocess

    try:
        return subprocess.run(["c++filt", name], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return name


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--ptxas-table":
        with open(sys.argv[2]) as f:
            table = ptxas_table(f.read())
        names = {kernel: _demangled(kernel) for kernel in {r["kernel"] for r in table}}  # c++filt once each
        seen = set()
        print("| kernel | arch | registers | spill stores / loads (bytes) | static smem (bytes) |")
        print("|---|---|---|---|---|")
        for row in sorted(table, key=lambda r: (names[r["kernel"]], r["arch"])):
            key = (row["kernel"], row["arch"])
            if key in seen:
                continue
            seen.add(key)
            print(f"| `{names[row['kernel']]}` | {row['arch']} | {row['registers']} | "
                  f"{row.get('spill_stores', 0)} / {row.get('spill_loads', 0)} | {row['static_smem']} |")
        spilling = sorted({names[r["kernel"]] for r in table if r.get("spill_stores") or r.get("spill_loads")})
        if not table or spilling:
            print("no ptxas reports in the log (built without MEMKERNELS_PTXAS_VERBOSE=1?)" if not table
                  else "kernels that spill registers:\n  " + "\n  ".join(spilling), file=sys.stderr)
            sys.exit(1)
    else:
        print("usage: python -m memkernels._cuda_build --ptxas-table BUILD_LOG", file=sys.stderr)
        sys.exit(2)
