"""When a public op may skip the dispatcher and call its backend directly.

In plain eager mode a public op runs its backend's launcher inside a `torch.autograd.Function`
(or, with no gradient needed, with no autograd at all): one Python hop instead of the
dispatcher's round trip through the registered op's Python autograd. Anything that must
see the op as an operator goes through `torch.ops.memkernels.*` instead:
torch.compile tracing, a TorchDispatchMode (FakeTensorMode, FlopCounterMode, ...), a
TorchFunctionMode, a tensor subclass with `__torch_function__`, and functorch transforms.
"""
import torch
from torch._C import _functorch
from torch.overrides import has_torch_function


def fast_path_allowed(tensors: tuple) -> bool:
    """True when nothing needs to see the op in the dispatcher (each check ~0.1 us).

    `torch.compiler.is_compiling()` comes first: dynamo folds it to True and never traces
    the C calls behind it.
    """
    return not (
        torch.compiler.is_compiling()
        or torch._C._len_torch_dispatch_stack()
        or torch._C._is_torch_function_mode_enabled()
        or has_torch_function(tensors)
        or _functorch.peek_interpreter_stack() is not None
    )

