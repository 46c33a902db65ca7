# Every target sets itself up on a fresh machine: a .venv with the pinned torch
# (the CUDA 13 build, so the CUDA extension compiles wherever nvcc exists, GPU
# or not) and this package installed editable with its test and bench extras.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.14.1
CUTLASS_PIN := nvidia-cutlass==4.2.0.0
READY := $(VENV)/.ready

.PHONY: test bench lint info clean gpu-test gpu-quick gpu-wheels ptxas dispatch-rule codegen

$(READY): pyproject.toml setup.py $(wildcard csrc/*)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet setuptools wheel
	$(PY) -m pip install --quiet $(TORCH_PIN)
	# CuTe/CUTLASS headers for the tensor-core kernels (the wheel's Python deps are not needed)
	$(PY) -m pip install --quiet --no-deps $(CUTLASS_PIN)
	$(PY) -m pip install --quiet --no-build-isolation -e '.[test,bench]'
	touch $@

test: $(READY)
	$(PY) -m memkernels.info
	$(PY) -m pytest tests -q --durations=25

BENCH_OUT ?= benchmarks/results/local

bench: $(READY)
	mkdir -p $(BENCH_OUT)
	$(PY) -m memkernels.info | tee $(BENCH_OUT)/info.txt
	$(PY) -m pytest benchmarks/test_ops.py -q -p no:cacheprovider \
		--benchmark-json=$(BENCH_OUT)/ops.json --benchmark-columns=median,iqr,rounds
	$(PY) -m pytest benchmarks/test_overhead.py -q -p no:cacheprovider \
		--benchmark-json=$(BENCH_OUT)/overhead.json --benchmark-columns=median,iqr,rounds
	$(PY) -m benchmarks.report $(BENCH_OUT)/ops.json | tee $(BENCH_OUT)/ops.md
	$(PY) -m benchmarks.report $(BENCH_OUT)/overhead.json | tee $(BENCH_OUT)/overhead.md
	$(PY) -m benchmarks.overhead_pairs | tee $(BENCH_OUT)/overhead_pairs.md
	if $(PY) -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then \
		$(PY) -m benchmarks.claims --out $(BENCH_OUT); \
	else \
		$(PY) -m benchmarks.claims --quick --out $(BENCH_OUT); \
	fi

# This CPU's measured dispatch rule for backend="auto" (memkernels/rules/cpu.json) and the
# timings it came from; a few minutes, on an otherwise idle machine.
dispatch-rule: $(READY)
	$(PY) -m benchmarks.dispatch_rule --measure --out memkernels/rules/cpu.json \
		--measurements benchmarks/results/cpu/dispatch.json

# Linters in a venv of their own (no torch needed): ruff for Python, clang-format for csrc/.
LINT_VENV := .venv-lint
LINT_READY := $(LINT_VENV)/.ready
CSRC := $(shell find csrc -name '*.cu' -o -name '*.cuh' -o -name '*.cpp' -o -name '*.h')

$(LINT_READY):
	$(PYTHON) -m venv $(LINT_VENV)
	$(LINT_VENV)/bin/python -m pip install --quiet ruff==0.14.5 clang-format==19.1.7
	touch $@

lint: $(LINT_READY)
	$(LINT_VENV)/bin/ruff check memkernels benchmarks tests setup.py
	$(LINT_VENV)/bin/clang-format --dry-run --Werror $(CSRC)

# On a GPU machine with torch and triton installed and no network: no venv, no downloads.
# gpu-quick is everything in one device call of at most 8 minutes (benchmarks/gpu_session.sh).
gpu-test:
	bash benchmarks/gpu_session.sh tests

gpu-quick:
	bash benchmarks/gpu_session.sh quick

info: $(READY)
	$(PY) -m memkernels.info

clean:
	rm -rf $(VENV) $(LINT_VENV) build *.egg-info

# The wheels a GPU machine without network needs beside its torch and triton (carried in .whl/):
# the CuTe headers, and pytest-xdist for the parallel suites (pure Python, about 90 kB); and the
# commit they go with, for a copy of the tree that travels without .git.
XDIST_PINS := pytest-xdist==3.8.0 execnet==2.1.2

gpu-wheels:
	mkdir -p .whl
	$(PYTHON) -m pip download --quiet --no-deps --dest .whl $(CUTLASS_PIN) $(XDIST_PINS)
	git rev-parse HEAD > .whl/COMMIT

# Rebuild the extension with ptxas reports; print registers, spills and shared memory per
# kernel (csrc/NOTES.md keeps the table), failing if any kernel spills. About 10 minutes on 2 cores.
ptxas: $(READY)
	mkdir -p build
	MEMKERNELS_PTXAS_VERBOSE=1 $(PY) setup.py build_ext --inplace --build-temp build/ptxas > build/ptxas.log 2>&1
	$(PY) -m memkernels._cuda_build --ptxas-table build/ptxas.log

# Compile every Triton kernel for sm_90 and sm_80 without a GPU and write what the compiler made
# of it (MMA kinds, copies, registers, ptxas spills, inner-loop mix, the per-tile cost model) to
# benchmarks/results/codegen/sm90.md and sm80.md. About 5 minutes on 2 cores.
codegen: $(READY)
	# One process per architecture: after an sm_90 pass in the same process, ptxas exits 255 on
	# sm_80 kernels that compile alone (seen with triton 3.8, not yet understood).
	$(PY) -m benchmarks.codegen --arch 90 --out benchmarks/results/codegen
	$(PY) -m benchmarks.codegen --arch 80 --out benchmarks/results/codegen
