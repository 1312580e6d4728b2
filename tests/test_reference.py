"""The torch backend (block form) and its d slope terms against the float64 truth (the
plain quadratic form of tests/utils.py) in every feature combination, at N = 0, B = 0,
N = 1 and with malformed offsets; the recurrence identities (chaining, varlen, decode);
long sequences."""
import pytest
import torch

import lightning_attention as la
from lightning_attention.kernels.torch_backend import BACKEND as TORCH, blocks
import utils
from utils import check_backend, check_state, gpu, make_inputs, rand_slope, rand_state


@pytest.mark.parametrize("N", [1, 63, 65, 200])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_torch_backend_matches_reference(N, dtype):
    check_backend("torch", N=N, dtype=dtype, initial_state=True, final_state=True, scale=0.7)


@pytest.mark.parametrize("layout", ["bhnd", "bnhd", "strided"])
@pytest.mark.parametrize("decay", [True, False])
@pytest.mark.parametrize("states", [False, True])
def test_torch_backend_features(layout, decay, states):
    check_backend("torch", N=130, D=16, E=64, layout=layout, decay=decay,
                  initial_state=states, final_state=states)


@pytest.mark.parametrize("case", utils.feature_cases(130), ids=utils.case_id)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_torch_backend_feature_cases(dtype, case):
    """d slope (float64: exact) and every other value, each feature combination."""
    check_backend("torch", H=2, N=130, D=16, E=32, dtype=dtype, **case)


def test_torch_backend_malformed_cu_seqlens():
    utils.check_malformed(TORCH)


@pytest.mark.parametrize("N", [1, 65])
@pytest.mark.parametrize("layout", ["bhnd", "bnhd"])
@pytest.mark.parametrize("decay", [True, False])
def test_torch_backend_state_pass(N, layout, decay):
    check_state("torch", N=N, layout=layout, decay=decay)


def test_chaining_halves_equals_whole():
    q, k, v = make_inputs(2, 3, 150, 32, 16)
    slope = rand_slope(3)
    o, s = la.lightning_attn(q, k, v, slope, output_final_state=True, backend="torch")
    o1, s1 = la.lightning_attn(q[:, :, :77], k[:, :, :77], v[:, :, :77], slope,
                               output_final_state=True, backend="torch")
    o2, s2 = la.lightning_attn(q[:, :, 77:], k[:, :, 77:], v[:, :, 77:], slope,
                               initial_state=s1, output_final_state=True, backend="torch")
    torch.testing.assert_close(torch.cat([o1, o2], 2), o, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s2, s, rtol=1e-5, atol=1e-5)


def test_varlen_equals_separate_calls():
    lens = [30, 0, 70, 1]
    cu = torch.tensor([0, 30, 30, 100, 101])
    q, k, v = make_inputs(1, 2, 101, 16, 32)
    slope = rand_slope(2)
    s0 = rand_state(4, 2, 16, 32)
    o, s = la.lightning_attn(q, k, v, slope, initial_state=s0, output_final_state=True,
                             cu_seqlens=cu, backend="torch")
    start = 0
    for i, n in enumerate(lens):
        sl = slice(start, start + n)
        oi, si = la.lightning_attn(q[:, :, sl], k[:, :, sl], v[:, :, sl], slope,
                                   initial_state=s0[i:i + 1], output_final_state=True,
                                   backend="torch")
        torch.testing.assert_close(o[:, :, sl], oi, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(s[i:i + 1], si, rtol=1e-5, atol=1e-5)
        start += n


def test_decode_steps_equal_full_sequence():
    utils.check_decode_steps(lambda q, k, v, state, slope, scale: la.lightning_attn_decode(
        q, k, v, state, slope, scale=scale, backend="torch"))


@pytest.mark.parametrize("B,N,cu_seqlens", [(2, 0, None), (0, 10, None), (2, 1, None),
                                            (1, 0, [0, 0, 0]), (1, 1, [0, 0, 1, 1])])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_empty_and_single_token(B, N, cu_seqlens, dtype):
    """Values of the output, the final state and every gradient (d slope with a loss on
    the final state included) at N = 0, B = 0 and N = 1."""
    check_backend("torch", B=B, H=2, N=N, D=16, E=16, dtype=dtype, initial_state=True,
                  final_state=True, cu_seqlens=cu_seqlens)


@pytest.mark.parametrize("slope_value", [16.0, 1e-5])
def test_long_sequence_is_finite_and_exact(slope_value):
    """N = 16K on the CPU: the block form against a float64 token-by-token recurrence."""
    N, H, D = 16384, 2, 16
    q, k, v = make_inputs(1, H, N, D, D)
    slope = torch.full((H,), slope_value)
    o, s = la.lightning_attn(q, k, v, slope, output_final_state=True, backend="torch")
    state = torch.zeros(1, H, D, D, dtype=torch.float64)
    ref = torch.empty(1, H, N, D, dtype=torch.float64)
    q64, k64, v64 = (x.double() for x in (q, k, v))
    for t in range(N):
        ref[:, :, t] = blocks.decode(q64[:, :, t], k64[:, :, t], v64[:, :, t], state,
                                        slope.double(), 1.0)
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    err = (o.double() - ref).abs().max() / ref.abs().max()
    assert err < 1e-5, err
    assert ((s.double() - state).abs().max() / state.abs().max()) < 1e-5


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_backend_on_gpu(dtype):
    check_backend("torch", device="cuda", dtype=dtype, N=130, layout="bnhd",
                  initial_state=True, final_state=True)
