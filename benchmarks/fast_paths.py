"""The CUDA backend with its fast paths on, for one benchmark call or one training run.

The fast paths (tensor-core attention, vectorized memory_norm) are off by default until they
pass on a GPU; the op benchmarks (`memkernels-cuda-fast`) and the convergence check
(`cuda-fast`) measure them beside the scalar kernels by turning them on for their duration.
"""
import contextlib


@contextlib.contextmanager
def fast_paths_on():
    from memkernels import cuda_kernels  # loads the extension: only where the CUDA backend runs

    before = cuda_kernels.fast_paths_enabled()
    cuda_kernels.set_fast_paths(True)
    try:
        yield
    finally:
        cuda_kernels.set_fast_paths(before)
