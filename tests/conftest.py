import os
import sys

import pytest
import torch

# Tests import the helpers as `utils` and the package from the checkout or the install.
sys.path.insert(0, os.path.dirname(__file__))

# pytest-xdist workers share the machine's cores. By default torch's CPU ops in every worker
# (and in the processes a test spawns) use all cores, so 16 workers on 16 cores run 256
# threads: on the H200 host the float64 gradchecks took 40-60 s each instead of ~1 s. Each
# worker takes its share.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _THREADS = max(1, (os.cpu_count() or 1) // _WORKERS)
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)
    torch.set_num_threads(_THREADS)

#: The most GPU memory one test may allocate: pytest-xdist workers share one GPU
#: (bench/gpu_run.sh runs 16 of them on an H200).
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


@pytest.fixture
def interp(monkeypatch):
    """Run the Triton kernels on the CPU in the interpreter (where it can run them)."""
    pytest.importorskip("triton")
    from lightning_attention.kernels.triton_backend import _common
    why = _common.interpreter_problem()
    if why:
        pytest.skip(why)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    yield "cpu"


@pytest.fixture
def descending(monkeypatch):
    """Run each grid's programs in descending order. The interpreter runs them one after
    another in ascending order (triton/runtime/interpreter.py: GridExecutor), so a program
    that writes rows owned by a later one is overwritten by it and passes (on a GPU: a
    race). In descending order the stray write lands last and the values are wrong. The
    tests that keep ascending order catch writes into earlier programs' rows."""
    pytest.importorskip("triton")
    from triton.runtime.interpreter import InterpreterBuilder
    ascending = InterpreterBuilder.set_grid_idx

    def reversed_idx(self, x, y, z):
        nx, ny, nz = self.grid_dim
        ascending(self, nx - 1 - x, ny - 1 - y, nz - 1 - z)
    monkeypatch.setattr(InterpreterBuilder, "set_grid_idx", reversed_idx)
