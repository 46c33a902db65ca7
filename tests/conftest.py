import os

import torch

# The Triton kernels are decorated at import time, and the interpreter is chosen
# then: set it before anything imports memkernels, on machines with no GPU.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
