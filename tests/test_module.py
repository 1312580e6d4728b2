"""LightningAttention: shapes, chunked prefill and decode equal one pass, it trains."""
import torch

import lightning_attention as la


def _layer(**kw):
    torch.manual_seed(0)
    return la.LightningAttention(64, 4, layer_idx=1, num_layers=3, backend="torch", **kw)


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
