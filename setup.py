"""Build script. The package is pure Python plus optional compiled kernels.

Metadata lives in pyproject.toml; this file builds the CUDA extension
`memkernels._C` from csrc/ when nvcc is available (a GPU is not needed to
build). Set MEMKERNELS_CUDA=0 to skip it. The target architectures default to
sm_80 and sm_90 (TORCH_CUDA_ARCH_LIST="8.0;9.0") unless TORCH_CUDA_ARCH_LIST
is set; MEMKERNELS_HEAD_DIMS picks the tensor-core head-dim buckets (see
memkernels/_cuda_build.py). Parallel compilation follows MAX_JOBS (ninja).
"""
import importlib.util
import os
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _log(msg):
    print(f"memkernels setup: {msg}", file=sys.stderr)


def _find_cuda_home():
    """The CUDA toolkit root: $CUDA_HOME / $CUDA_PATH, else /usr/local/cuda, else nvcc on PATH.

    /usr/local/cuda comes before `which nvcc` because nvcc may be a wrapper
    script (e.g. /usr/local/bin/nvcc) whose parent is not the toolkit root.
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return home
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda"
    nvcc = shutil.which("nvcc")
    if nvcc:
        home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        if os.path.exists(os.path.join(home, "include", "cuda_runtime_api.h")):
            return home
    return None


def _build_description():
    """memkernels/_cuda_build.py, loaded on its own: the package itself is not importable yet."""
    spec = importlib.util.spec_from_file_location("_cuda_build", os.path.join(ROOT, "memkernels", "_cuda_build.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _extensions():
    """(ext_modules, cmdclass) for memkernels._C, or ([], {}) with the reason printed."""
    if os.environ.get("MEMKERNELS_CUDA", "1").strip() == "0":
        _log("MEMKERNELS_CUDA=0: not building the CUDA extension memkernels._C.")
        return [], {}
    cuda_home = _find_cuda_home()
    if cuda_home is None:
        _log("nvcc not found (set CUDA_HOME or put nvcc on PATH): not building memkernels._C; "
             "the 'cuda' backend will be unavailable.")
        return [], {}
    # Before torch.utils.cpp_extension is imported: it reads CUDA_HOME once, at import.
    os.environ["CUDA_HOME"] = cuda_home
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    try:
        import torch  # noqa: F401
        from torch.utils import cpp_extension
    except ImportError as error:
        _log(f"torch is not importable ({error}): not building memkernels._C. "
             "Install torch first and build with --no-build-isolation.")
        return [], {}
    if cpp_extension.CUDA_HOME is None:
        _log("torch found no CUDA toolkit (CUDA_HOME): not building memkernels._C.")
        return [], {}

    build = _build_description()
    ext = cpp_extension.CUDAExtension(
        name="memkernels._C",
        sources=[os.path.relpath(src, ROOT) for src in build.sources()],
        include_dirs=build.include_dirs(),
        extra_compile_args={"cxx": build.cxx_flags(), "nvcc": build.nvcc_flags()},
    )
    if build.cutlass_include() is None:
        _log("CuTe/CUTLASS headers not found (pip install --no-deps nvidia-cutlass==4.2.0.0, or set "
             "MEMKERNELS_CUTLASS_INCLUDE): building the scalar CUDA kernels only.")
    dims = ",".join(map(str, build.head_dims())) or "none"
    _log(f"building memkernels._C with {cpp_extension.CUDA_HOME}/bin/nvcc for TORCH_CUDA_ARCH_LIST="
         f"{os.environ['TORCH_CUDA_ARCH_LIST']}, tensor-core head dims {dims}")
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
