import os
import sys

import pytest
import torch

# Tests import the helpers as `utils` and the package from the checkout or the install.
sys.path.insert(0, os.path.dirname(__file__))

#: The most GPU memory one test may allocate: pytest-xdist workers share one GPU
#: (bench/gpu_run.sh runs 8 of them on an H200).
GPU_TEST_BYTES = 8 << 30


@pytest.fixture(autouse=True)
def gpu_memory_budget(request):
    if not torch.cuda.is_available():
        yield
        return
    torch.cuda.reset_peak_memory_stats()
    yield
    peak = torch.cuda.max_memory_allocated()
    assert peak <= GPU_TEST_BYTES, (f"{request.node.nodeid} allocated {peak / 2**30:.1f} GiB "
                                    f"on the GPU (at most {GPU_TEST_BYTES >> 30} GiB a test)")
