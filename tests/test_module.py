"""LightningAttention: against a plain restatement of the layer in float64; chunked
prefill and decode equal one pass; it trains; its arguments and inputs are checked with
named messages; init_state follows its dtype and device."""
import re

import pytest
import torch
import torch.nn.functional as F

import lightning_attention as la
from utils import truth


def _layer(**kw):
    torch.manual_seed(0)
    return la.LightningAttention(64, 4, layer_idx=1, num_layers=3, backend="torch", **kw)


def _restated(layer, x, state):
    """The layer written out: y = W_out (RMSNorm(o) ⊙ sigmoid(u)) with [q|k|v|u] = W x,
    q, k through SiLU, o the float64 truth of the attention with slopes 2^(-8(h+1)/H)
    scaled by 1 - layer_idx/(num_layers-1) + 1e-5 (here layer 1 of 3, H = 4)."""
    B, N, _ = x.shape
    H, d = 4, 16
    q, k, v, u = (x @ w.T for w in layer.qkvu_proj.weight.detach().chunk(4))
    q, k = F.silu(q), F.silu(k)
    heads = lambda t: t.view(B, N, H, d).transpose(1, 2)  # noqa: E731
    slope = torch.tensor([2.0 ** (-8 * (h + 1) / H) for h in range(H)]) * (1 - 1 / 2 + 1e-5)
    o, final = truth(heads(q), heads(k), heads(v), slope, 1.0, state)
    o = o.transpose(1, 2).reshape(B, N, H * d)
    o = o * torch.rsqrt(o.square().mean(-1, keepdim=True) + 1e-5) * layer.norm.weight.detach()
    return (o * torch.sigmoid(u)) @ layer.out_proj.weight.detach().T, final


def test_matches_restatement_float64():
    layer = _layer().double()
    with torch.no_grad():  # weights away from their init (norm weight 1, no structure)
        layer.norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 37, 64, dtype=torch.float64)
    s0 = torch.randn(2, 4, 16, 16, dtype=torch.float64) * 0.1
    y, state = layer(x, state=s0, output_state=True)
    ref, ref_state = _restated(layer, x, s0)
    torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(state, ref_state, rtol=1e-10, atol=1e-12)
    step_state = s0.clone()
    ref1, _ = _restated(layer, x[:, :1], s0)
    with torch.no_grad():
        torch.testing.assert_close(layer.step(x[:, 0], step_state), ref1[:, 0], rtol=1e-10,
                                   atol=1e-12)


def test_shapes_and_slopes():
    layer = _layer()
    x = torch.randn(2, 37, 64)
    assert layer(x).shape == (2, 37, 64)
    torch.testing.assert_close(layer.slope, la.build_slopes(4, 1, 3))


def test_empty_sequence():
    """N = 0 (e.g. a rank's empty slice under sequence parallelism): an empty output, and the
    state passes through a chunked prefill unchanged."""
    layer = _layer()
    x = torch.randn(2, 0, 64)
    assert layer(x).shape == (2, 0, 64)
    state = torch.randn(2, 4, 16, 16)
    y, new_state = layer(x, state=state, output_state=True)
    assert y.shape == (2, 0, 64) and torch.equal(new_state, state)


def test_chunked_prefill_and_decode_equal_one_pass():
    layer = _layer()
    x = torch.randn(2, 30, 64)
    with torch.no_grad():
        y, state = layer(x, output_state=True)
        y1, s1 = layer(x[:, :17], output_state=True)
        y2, s2 = layer(x[:, 17:25], state=s1, output_state=True)
        torch.testing.assert_close(torch.cat([y1, y2], 1), y[:, :25], rtol=1e-4, atol=1e-5)
        for t in range(25, 30):
            torch.testing.assert_close(layer.step(x[:, t], s2), y[:, t], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(s2, state, rtol=1e-4, atol=1e-5)
        s0 = layer.init_state(2)
        for t in range(3):
            layer.step(x[:, t], s0)
        assert s0.shape == (2, 4, 16, 16)


@pytest.mark.parametrize("args,kw,match", [
    ((100, 4), {}, r"head_dim \(embed_dim // num_heads\) must be a multiple of 16 .*got 25"),
    ((100, 3), {}, r"embed_dim must be divisible by num_heads .*embed_dim=100, num_heads=3"),
    ((64, 4), dict(head_dim=20), r"head_dim must be a multiple of 16 .*got 20"),
    ((64, 4), dict(head_dim=272), r"head_dim must be .* to 256 .*got 272"),
    ((0, 4), {}, r"embed_dim must be a positive int \(got 0\)"),
    ((64, -2), {}, r"num_heads must be a positive int \(got -2\)"),
    ((64, 2.0), {}, r"num_heads must be a positive int \(got 2.0\)"),
    ((64, 4), dict(num_layers=0), r"num_layers must be a positive int \(got 0\)"),
])
def test_construction_errors_name_the_argument(args, kw, match):
    with pytest.raises(ValueError, match="^LightningAttention: " + match):
        la.LightningAttention(*args, **kw)


def test_explicit_head_dim():
    layer = la.LightningAttention(100, 4, head_dim=32)
    assert layer(torch.randn(1, 3, 100)).shape == (1, 3, 100)
    assert layer.init_state(2).shape == (2, 4, 32, 32)


@pytest.mark.parametrize("shape", [(100, 64), (2, 5, 32), (2, 5, 64, 1)])
def test_forward_checks_rank_and_width(shape):
    want = re.escape(f"LightningAttention.forward: x must have shape (B, N, C) with "
                     f"C = embed_dim = 64 (got {shape})")
    with pytest.raises(ValueError, match="^" + want):
        _layer()(torch.randn(shape))


@pytest.mark.parametrize("shape", [(2, 1, 64), (2, 32), (64,)])
def test_step_checks_rank_and_width(shape):
    layer = _layer()
    want = re.escape(f"LightningAttention.step: x must have shape (B, C) with "
                     f"C = embed_dim = 64 (got {shape})")
    with pytest.raises(ValueError, match="^" + want):
        layer.step(torch.randn(shape), layer.init_state(2))
    with pytest.raises(TypeError, match="^LightningAttention.step: x must be a torch.Tensor"):
        layer.step([0.0] * 64, layer.init_state(1))


@pytest.mark.parametrize("dtype,state_dtype", [(torch.float32, torch.float32),
                                               (torch.bfloat16, torch.float32),
                                               (torch.float16, torch.float32),
                                               (torch.float64, torch.float64)])
def test_init_state_follows_module_dtype(dtype, state_dtype):
    layer = _layer().to(dtype)
    state = layer.init_state(2)
    assert state.dtype == state_dtype and state.shape == (2, 4, 16, 16)
    assert torch.equal(state, torch.zeros_like(state))
    if dtype in (torch.float32, torch.float64):  # the torch backend's CPU dtypes
        x = torch.randn(2, 64, dtype=dtype)
        assert layer.step(x, state).dtype == dtype
        assert state.abs().sum() > 0


def test_init_state_follows_module_device():
    layer = la.LightningAttention(64, 4, device="meta")
    assert layer.init_state(2).device.type == "meta"
    assert layer.init_state(2, device="cpu").device.type == "cpu"


def test_module_trains():
    """A toy task (predict the running mean of the inputs): the loss must drop."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 64), _layer(), torch.nn.Linear(64, 8))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        x = torch.randn(4, 48, 8)
        target = x.cumsum(1) / torch.arange(1, 49).view(1, -1, 1)
        loss = torch.nn.functional.mse_loss(model(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10]), losses
