"""The transformers MiniMax drop-in (lightning_attention.integrations.minimax) against the
unpatched model, float32 on the CPU (torch backend), a tiny random config: logits of a
prefill, of chunked prefill with transformers' cache, and greedy generation with padding.
Skipped without transformers (a test extra)."""
import copy
import inspect

import pytest
import torch

transformers = pytest.importorskip("transformers")
modeling_minimax = pytest.importorskip("transformers.models.minimax.modeling_minimax")

from lightning_attention.integrations import minimax  # noqa: E402

#: The cache argument's name: `cache` from transformers 5.24, `past_key_values` before.
CACHE = ("cache" if "cache" in inspect.signature(modeling_minimax.MiniMaxForCausalLM.forward).parameters
         else "past_key_values")


@pytest.fixture(scope="module")
def models():
    """(unpatched, patched) copies of one random model. Weights of std 0.1 (not the default
    0.02), so that the attention layers move the logits: slopes 10% off change them by ~0.5;
    the last layer is a lightning-attention layer, whose slopes are MiniMax's own. Layer 0
    is a softmax-attention layer: transformers takes a chunk's past length from layer 0's
    cache (`get_seq_length()`), which a lightning layer 0 leaves at 0."""
    torch.manual_seed(0)
    config = transformers.MiniMaxConfig(
        vocab_size=97, hidden_size=64, intermediate_size=32, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=2,
        num_experts_per_tok=1, block_size=16, max_position_embeddings=256,
        initializer_range=0.1, pad_token_id=0, eos_token_id=None,
        layer_types=["full_attention", "linear_attention", "linear_attention", "linear_attention"])
    ref = modeling_minimax.MiniMaxForCausalLM(config).eval()
    return ref, minimax.patch(copy.deepcopy(ref), backend="torch")


@pytest.fixture
def calls(monkeypatch):
    """How often the patched layers call this package's forward and decode."""
    count = {"fwd": 0, "decode": 0}

    def spy(name, fn):
        def wrapped(*args, **kwargs):
            count[name] += 1
            return fn(*args, **kwargs)
        return wrapped
    monkeypatch.setattr(minimax, "lightning_attn", spy("fwd", minimax.lightning_attn))
    monkeypatch.setattr(minimax, "lightning_attn_decode",
                        spy("decode", minimax.lightning_attn_decode))
    return count


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_prefill_logits(models, calls):
    ref, pat = models
    ids = torch.randint(1, 97, (2, 40))
    close(pat(ids).logits, ref(ids).logits)
    assert calls["fwd"] == 3


@torch.no_grad()
def test_chunked_prefill_with_the_cache(models, calls):
    """Three chunks (25, 14 and 1 tokens) through transformers' MiniMaxCache give the
    logits of the whole sequence; the states in the cache are float32."""
    ref, pat = models
    ids = torch.randint(1, 97, (2, 40))
    cache = modeling_minimax.MiniMaxCache()
    logits = [pat(ids[:, a:b], use_cache=True, **{CACHE: cache}).logits
              for a, b in ((0, 25), (25, 39), (39, 40))]
    close(torch.cat(logits, 1), ref(ids).logits)
    assert calls == {"fwd": 6, "decode": 3}
    assert all(cache.get_linear_cache(i).dtype == torch.float32 for i in (1, 2, 3))


@torch.no_grad()
def test_greedy_generation(models, calls):
    """Left-padded prompts of two lengths: the same greedy tokens as the unpatched model."""
    ref, pat = models
    ids = torch.randint(1, 97, (2, 12))
    mask = torch.ones_like(ids)
    ids[1, :5], mask[1, :5] = 0, 0
    kw = dict(attention_mask=mask, max_new_tokens=10, do_sample=False, min_new_tokens=10)
    want = ref.generate(ids, **kw)
    got = pat.generate(ids, **kw)
    assert torch.equal(got, want), (got[:, 12:], want[:, 12:])
    assert calls["decode"] == 3 * 9


def test_patch_refuses_another_model():
    with pytest.raises(ValueError, match="no MiniMaxLightningAttention layer"):
        minimax.patch(torch.nn.Linear(2, 2))
