"""How the CUDA extension is built: by setup.py ahead of time, or here just in time.

`sources()`, `cxx_flags()` and `NVCC_FLAGS` describe the build for both paths;
setup.py loads this file on its own (no package import) to use them.

`load()` is the JIT fallback for a source checkout installed without the
extension (MEMKERNELS_CUDA=0, or built where nvcc was missing): it compiles
once into torch's extension cache (TORCH_EXTENSIONS_DIR) and imports the
module, which registers the same `memkernels::*_cuda_*` ops as
`memkernels._C`. Nothing here runs at import.
"""
import functools
import glob
import os
import sys

# No -std flag: torch's cpp_extension adds the standard its headers need
# (C++17 on older torch, C++20 on newer); the kernels are valid in both.
# No --use_fast_math: expf / logf accuracy matters for lse.
NVCC_FLAGS = ["-O3", "-lineinfo"]

_CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")


def sources() -> list[str]:
    """The extension's source files: every kernel .cu and the host .cpp files (checks, bindings)."""
    return sorted(glob.glob(os.path.join(_CSRC, "*.cu"))) + sorted(glob.glob(os.path.join(_CSRC, "*.cpp")))


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
        extra_include_paths=[_CSRC],
        extra_cflags=cxx_flags(),
        extra_cuda_cflags=NVCC_FLAGS,
        verbose=verbose,
    )
