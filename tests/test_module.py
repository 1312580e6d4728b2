"""LightningAttention: against a plain restatement of the layer in float64; chunked
prefill and decode equal one pass; it trains."""
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
