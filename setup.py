"""Build script. The package is pure Python plus optional compiled kernels.

Metadata lives in pyproject.toml; this file exists for the CUDA extension
`memkernels._C`, which later builds from csrc/ when nvcc is present.
"""
from setuptools import setup

setup()
