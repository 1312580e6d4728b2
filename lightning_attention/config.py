"""One source of truth for the numbers that the dispatcher, the kernels' wrappers, the
tests and the docs share."""
import torch

from .kernels.cuda_backend import DTYPES as CUDA_DTYPES, HEAD_DIMS as CUDA_HEAD_DIMS  # noqa: F401

#: Head dims every backend serves: multiples of 16 from 16 to 256 (D and E independently).
HEAD_DIMS = tuple(range(16, 257, 16))
#: Input dtypes; accumulation and states are float32.
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
#: float64 is served by the torch backend alone (for gradcheck), with float64 states.
TORCH_ONLY_DTYPES = (torch.float64,)
#: Head dims (D = E) and dtypes the CUDA kernels are compiled for: CUDA_HEAD_DIMS,
#: CUDA_DTYPES, declared in csrc/la_specs.h and read from the extension (empty without it).
#: Other calls go to Triton.
#: The backends in the order `auto` tries them.
BACKEND_ORDER = ("cuda", "triton", "torch")
#: Block (chunk) size of the PyTorch block form.
TORCH_BLOCK = 64
