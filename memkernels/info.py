"""`python -m memkernels.info`: versions, the device, and which backends run here.

For every op: what `backend="auto"` picks per dtype on this machine's device, and, for every
backend, the dtypes it can run here or the one-sentence reason it cannot (all from
`memkernels.capabilities.TABLE` and `memkernels.dispatch`).

`python -m memkernels.info --markdown` prints the README's backend table instead.
"""
import platform
import sys

import torch

import memkernels
from memkernels import capabilities, dispatch, rules
from memkernels.capabilities import ALL_DTYPES, dtype_name


def _triton_version() -> str:
    if dispatch.triton_import_error() is not None:
        return "not installed"
    import triton

    return triton.__version__


def _extension_status() -> str:
    error = dispatch.cuda_extension_error()
    return "built (memkernels._C)" if error is None else f"not available: {error}"


def _fast_paths_status(compute_capability: tuple[int, int] | None) -> str:
    """The switch, the tensor-core buckets built, and on a GPU (of `compute_capability`; None
    without one) that cannot run the tensor-core kernels, why not."""
    if dispatch.cuda_extension_error() is not None:
        return "-"
    from memkernels import cuda_kernels

    heads = ", ".join(map(str, cuda_kernels.tensor_core_head_dims())) or "none"
    state = "on" if cuda_kernels.fast_paths_enabled() else f"off ({capabilities.FAST_PATHS_OFF_REASON})"
    status = f"{state}; tensor-core head dims built: {heads}"
    refusal = compute_capability and cuda_kernels.tensor_core_arch_refusal(compute_capability)
    if refusal:
        major, minor = compute_capability
        status += f"; tensor cores refused on this GPU (sm_{major}{minor}): {refusal}"
    return status


def _device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _auto_line(op: str, device: torch.device) -> str:
    """What "auto" runs per dtype where no measured rule covers the inputs, and why it passes
    over a backend that could run it."""
    picks, notes = [], set()
    for dtype in ALL_DTYPES:
        chosen = dispatch.select(op, "auto", device, dtype)
        picks.append(f"{dtype_name(dtype)} -> {chosen}")
        for backend in capabilities.auto_order(op, device.type):
            if backend == chosen:
                break
            entry = capabilities.support(op, backend, device.type)
            if entry is not None and entry.not_auto_reason and dispatch.why_unavailable(
                    backend, device, dtype, op=op) is None:
                notes.add(f"{backend} runs {dtype_name(dtype)} only when asked: {entry.not_auto_reason}")
    return ("auto, unmeasured shapes: " + ", ".join(picks)
            + "".join(f"\n      ({note})" for note in sorted(notes)))


def _backend_line(op: str, backend: str, device: torch.device) -> str:
    reasons = {dtype: dispatch.why_unavailable(backend, device, dtype, op=op) for dtype in ALL_DTYPES}
    usable = [dtype_name(d) for d, why in reasons.items() if why is None]
    refusals = sorted({why for why in reasons.values() if why is not None})
    status = f"available ({', '.join(usable)})" if usable else "unavailable"
    if status != "unavailable" and op == "memory_read" and not capabilities.support(op, backend, device.type) \
            .grouped_heads:
        status += ", no grouped k/v heads"
    return f"    {backend:<7} {status}" + (f" - {'; '.join(refusals)}" if refusals else "")


def report() -> str:
    device = _device()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    lines = [
        f"memkernels {memkernels.__version__}",
        f"python     {platform.python_version()}",
        f"torch      {torch.__version__}",
        f"triton     {_triton_version()}",
        f"CUDA       {torch.version.cuda or 'none (CPU build of torch)'}",
        f"device     {device.type}: {name}",
        f"TRITON_INTERPRET {'on' if dispatch.triton_interpreter_enabled() else 'off'}",
        f"CUDA extension {_extension_status()}",
        f"CUDA fast paths {_fast_paths_status(capability)}",
        "",
        f"auto on {device.type}: {rules.describe(rules.device_kind(device.type))}",
        "",
        f"backends for {device.type} tensors:",
    ]
    for op in capabilities.OPS:
        lines += [f"  {op}", f"    {_auto_line(op, device)}"]
        lines += [_backend_line(op, backend, device) for backend in capabilities.BACKENDS]
    return "\n".join(lines)


if __name__ == "__main__":
    print(capabilities.markdown_table() if "--markdown" in sys.argv[1:] else report())
