"""`python -m memkernels.info`: versions, the device, and which backends run here.

Prints, for every op and backend, "available" or the one-sentence reason it
is not, for each dtype the package supports on this machine's device.
"""
import platform

import torch

import memkernels
from memkernels import dispatch

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _triton_version() -> str:
    if dispatch.triton_import_error() is not None:
        return "not installed"
    import triton

    return triton.__version__


def _extension_status() -> str:
    error = dispatch.cuda_extension_error()
    return "built (memkernels._C)" if error is None else f"not available: {error}"


def _device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def report() -> str:
    device = _device()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    lines = [
        f"memkernels {memkernels.__version__}",
        f"python     {platform.python_version()}",
        f"torch      {torch.__version__}",
        f"triton     {_triton_version()}",
        f"CUDA       {torch.version.cuda or 'none (CPU build of torch)'}",
        f"device     {device.type}: {name}",
        f"TRITON_INTERPRET {'on' if dispatch.triton_interpreter_enabled() else 'off'}",
        f"CUDA extension {_extension_status()}",
        "",
        f"backends for {device.type} tensors (auto picks the first available of "
        f"{dispatch.auto_order(device.type)}):",
    ]
    for op in dispatch.OPS:
        lines.append(f"  {op}")
        for backend in dispatch.BACKENDS:
            reasons = {dtype: dispatch.why_unavailable(backend, device, dtype) for dtype in _DTYPES}
            usable = [str(d).removeprefix("torch.") for d, why in reasons.items() if why is None]
            refusals = sorted({why for why in reasons.values() if why is not None})
            status = f"available ({', '.join(usable)})" if usable else "unavailable"
            detail = "; ".join(refusals)
            lines.append(f"    {backend:<7} {status}" + (f" - {detail}" if detail else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
