"""Greedy generation with a small random transformers MiniMax model (no download), unpatched
and with `lightning_attention.integrations.minimax.patch`: the tokens must agree; prints the
tokens/s of each (the first run of each warms up).

    python examples/minimax_generate.py                       # CPU, float32
    python examples/minimax_generate.py --device cuda --dtype bfloat16 --batch 8 --new-tokens 256
"""
import argparse
import copy
import time

import torch
from transformers import MiniMaxConfig, MiniMaxForCausalLM

from lightning_attention.integrations import minimax


def small_model(heads, head_dim, layers, max_tokens, device, dtype):
    """A random MiniMaxForCausalLM: one softmax-attention layer first (transformers reads the
    past length from layer 0's cache), then `layers - 1` lightning-attention layers."""
    hidden = heads * head_dim
    config = MiniMaxConfig(
        vocab_size=1000, hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        head_dim=head_dim, num_local_experts=4, num_experts_per_tok=2,
        max_position_embeddings=max_tokens + 1, pad_token_id=0, eos_token_id=None,
        layer_types=["full_attention"] + ["linear_attention"] * (layers - 1))
    return MiniMaxForCausalLM(config).to(device, dtype).eval()


def tokens_per_s(model, ids, new_tokens):
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    model.generate(ids, **kw)  # warm-up: kernels compiled, caches allocated
    if ids.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = model.generate(ids, **kw)
    if ids.is_cuda:
        torch.cuda.synchronize()
    return out, ids.shape[0] * new_tokens / (time.perf_counter() - start)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--prompt", type=int, default=64, help="prompt tokens")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--layers", type=int, default=4)
    args = p.parse_args()

    torch.manual_seed(0)
    model = small_model(args.heads, args.head_dim, args.layers, args.prompt + args.new_tokens,
                        args.device, getattr(torch, args.dtype))
    patched = minimax.patch(copy.deepcopy(model))
    ids = torch.randint(1, model.config.vocab_size, (args.batch, args.prompt), device=args.device)
    with torch.no_grad():
        want, base = tokens_per_s(model, ids, args.new_tokens)
        got, fast = tokens_per_s(patched, ids, args.new_tokens)
    same = (got == want).all(1)
    print(f"{args.layers - 1} lightning-attention layers of {args.heads} x {args.head_dim}, "
          f"{args.dtype} on {args.device}, batch {args.batch}, prompt {args.prompt}")
    print(f"  transformers' own layers:     {base:10.1f} tokens/s")
    print(f"  patched (lightning_attention): {fast:7.1f} tokens/s ({fast / base:.2f}x)")
    print(f"  greedy tokens identical in {int(same.sum())} of {args.batch} sequences"
          + ("" if args.dtype == "float32" else " (16-bit: rounding may flip a close argmax)"))
    print("  first sequence, patched:", got[0, args.prompt:].tolist()[:16], "...")


if __name__ == "__main__":
    main()
