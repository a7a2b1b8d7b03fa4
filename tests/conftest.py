import os
import sys

import torch

# no GPU: run the Triton kernels under Triton's interpreter, on CPU tensors (read when the
# kernels are defined, so before anything imports kernels/)
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
torch.set_flush_denormal(True)
