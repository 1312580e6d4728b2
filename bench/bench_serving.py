"""Serving speed (lightning_attention.serving) on one GPU: decode steps and prefill with states
in a pool, addressed by slot, beside their floors and peers.

    python bench/bench_serving.py                  # decode, graph, prefill, MiniMax layer
    python bench/bench_serving.py --only decode --batch 128
    python bench/bench_serving.py --cpu-smoke      # tiny sizes on the CPU: the script runs

decode   one step per layer (H = 32, D = E = 128, bf16) from a pool of 1024 slots in random
         order (auto dispatch, and Triton), beside the dense step (lightning_attn_decode),
         fla's fused_recurrent_simple_gla on dense states and the floor (a copy of the B
         addressed states: each is read and written once), and the same bytes read and
         written in place (dense.mul_(-1): a decode updates its states in place).
graph    the same step captured in a CUDA graph for each B, beside a graph of 2 empty kernel
         launches, the dense step's (its own kernel), the pool kernel on the dense states
         (slots 0..B-1: both CUDA decode kernels on the same bytes) and fla's step in graphs.
prefill  8 sequences of 1 to 16K tokens, 64K in total, from and into the pool (half start
         from a state), beside a plain varlen lightning_attn call with dense states.
minimax  transformers' MiniMaxLightningAttention layer (H = 64, D = 128, N = 4096, B = 1,
         bf16) with and without integrations.minimax.patch (needs transformers).
generate greedy generation tokens/s of the small random MiniMax model of
         examples/minimax_generate.py, with and without the patch (needs transformers).
Median ms (triton's do_bench on a GPU). Prints a table and writes JSON (--json, default
bench/results/serving.json). The CUDA pool kernels serve auto dispatch unless
LIGHTNING_ATTENTION_CUDA_SERVING=0 (JSON: cuda_serving).
"""
import argparse
import copy
import json
import os
import sys

import torch

import lightning_attention as la
from lightning_attention import dispatch, serving
from lightning_attention.kernels import cuda_backend
from bench_speed import timer

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples")

BF16 = torch.bfloat16


def fla_decode():
    """fla's recurrent kernel for one token on dense states, or None when fla is missing."""
    try:
        from fla.ops.simple_gla import fused_recurrent_simple_gla
    except Exception:
        return None

    def step(q, k, v, state, slope):
        return fused_recurrent_simple_gla(q[:, None], k[:, None], v[:, None], g_gamma=-slope,
                                          scale=1.0, initial_state=state,
                                          output_final_state=True)
    return step


def decode_rows(args, device, bench):
    H, D, rows = args.heads, args.dim, []
    pool = torch.randn(args.slots, H, D, D, device=device)
    slope = la.build_slopes(H, device=device)
    fla = fla_decode() if device.type == "cuda" else None
    for B in args.batch:
        q, k, v = (torch.randn(B, H, D, device=device, dtype=args.dtype) for _ in range(3))
        slots = torch.randperm(args.slots, device=device)[:B].int()
        dense = pool[slots.long()]
        q4 = q.unsqueeze(2)
        served = dispatch.providing("pool_decode", dispatch.select(None, q4, q4, q4), q4, q4, q4)
        row = {"bench": "decode", "B": B, "auto": served.name,
               "ours_ms": bench(lambda: serving.decode(q, k, v, pool, slots, slope), []),
               "floor_ms": bench(lambda: dense.clone(), []),
               "inplace_floor_ms": bench(lambda: dense.mul_(-1.0), [])}
        if device.type == "cuda":
            row["triton_ms"] = bench(lambda: serving.decode(q, k, v, pool, slots, slope,
                                                            backend="triton"), [])
        # the dense step (lightning_attn_decode on the B states, auto dispatch)
        row["dense_ms"] = bench(lambda: la.lightning_attn_decode(q, k, v, dense, slope), [])
        if fla is not None:
            row["fla_recurrent_ms"] = bench(lambda: fla(q, k, v, dense, slope), [])
        row["ours_vs_floor"] = row["ours_ms"] / row["floor_ms"]
        rows.append(row)
    return rows


def in_graph(bench, fn):
    """Median ms of replaying a CUDA graph of fn()."""
    fn()  # warm up: kernels compiled before capture
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return bench(g.replay, [])


def graph_rows(args, device, bench):
    """The decode step of each B in a CUDA graph (GPU time without the host's share, which
    decides the eager times at small B), beside 2 empty kernels and fla's step in graphs."""
    H, D = args.heads, args.dim
    pool = torch.randn(args.slots, H, D, D, device=device)
    slope = la.build_slopes(H, device=device)
    fla = fla_decode()
    x = torch.zeros(1, device=device)
    empty = in_graph(bench, lambda: (x.add_(0), x.add_(0)))
    rows = []
    for B in args.batch:
        q, k, v = (torch.randn(B, H, D, device=device, dtype=args.dtype) for _ in range(3))
        slots = torch.randperm(args.slots, device=device)[:B].int()
        ms = in_graph(bench, lambda: serving.decode(q, k, v, pool, slots, slope))
        row = {"bench": "graph", "B": B, "decode_graph_ms": ms,
               "two_empty_kernels_graph_ms": empty, "vs_two_empty": ms / empty}
        dense = pool[slots.long()]
        # the same step on dense states (lightning_attn_decode)
        row["dense_graph_ms"] = in_graph(bench, lambda: la.lightning_attn_decode(q, k, v, dense,
                                                                                  slope))
        if fla is not None:
            try:
                row["fla_recurrent_graph_ms"] = in_graph(bench, lambda: fla(q, k, v, dense, slope))
            except Exception as e:  # a peer that cannot be captured is a finding, not a crash
                row["fla_recurrent_graph_ms"] = f"not capturable: {type(e).__name__}: {e}"[:200]
        rows.append(row)
    return rows


def prefill_rows(args, device, bench):
    H, D = args.heads, args.dim
    lens = args.prefill_lens
    cu = torch.tensor([0] + lens, device=device).cumsum(0).int()
    T = int(cu[-1])
    q, k, v = (torch.randn(1, H, T, D, device=device, dtype=args.dtype)
               * (D ** -0.5 if i < 2 else 1) for i in range(3))
    slope = la.build_slopes(H, device=device)
    pool = torch.randn(args.slots, H, D, D, device=device)
    n = len(lens)
    slots = torch.randperm(args.slots, device=device)[:n].int()
    has = torch.arange(n, device=device) % 2 == 0
    dense = pool[slots.long()]
    row = {"bench": "prefill", "T": T, "lens": lens,
           "ours_ms": bench(lambda: serving.prefill(q, k, v, slope, cu, pool, slots,
                                                    has_state=has), []),
           "plain_varlen_ms": bench(lambda: la.lightning_attn(
               q, k, v, slope, initial_state=dense, output_final_state=True, cu_seqlens=cu), [])}
    row["ours_vs_plain"] = row["ours_ms"] / row["plain_varlen_ms"]
    if device.type == "cuda":
        row["plain_varlen_triton_ms"] = bench(lambda: la.lightning_attn(
            q, k, v, slope, initial_state=dense, output_final_state=True, cu_seqlens=cu,
            backend="triton"), [])
    return [row]


def minimax_rows(args, device, bench):
    try:
        from transformers import MiniMaxConfig
        from transformers.models.minimax.modeling_minimax import MiniMaxLightningAttention
        from lightning_attention.integrations import minimax
    except Exception as e:
        print(f"minimax: skipped ({type(e).__name__}: {e})")
        return []
    H, D, N = args.minimax_heads, args.dim, args.minimax_n
    config = MiniMaxConfig(hidden_size=H * D, num_attention_heads=H, head_dim=D,
                           num_hidden_layers=2, layer_types=["linear_attention"] * 2)
    layer = MiniMaxLightningAttention(config, 0).to(device, args.dtype).eval()
    patched = copy.deepcopy(layer)
    minimax.patch(patched)
    x = torch.randn(1, N, H * D, device=device, dtype=args.dtype)
    with torch.no_grad():
        return [{"bench": "minimax_layer", "H": H, "D": D, "N": N,
                 "transformers_ms": bench(lambda: layer(x, None, None), []),
                 "patched_ms": bench(lambda: patched(x, None, None), [])}]


def generate_rows(args, device, bench):
    """Greedy generation tokens/s of the example's small model, unpatched and patched."""
    sys.path.insert(0, EXAMPLES)
    try:
        from minimax_generate import small_model, tokens_per_s
        from lightning_attention.integrations import minimax
    except Exception as e:
        print(f"generate: skipped ({type(e).__name__}: {e})")
        return []
    torch.manual_seed(0)
    g = args.generate
    model = small_model(g["heads"], g["head_dim"], g["layers"], g["prompt"] + g["new"], device,
                        args.dtype)
    patched = minimax.patch(copy.deepcopy(model))
    ids = torch.randint(1, model.config.vocab_size, (g["batch"], g["prompt"]), device=device)
    with torch.no_grad():
        want, base = tokens_per_s(model, ids, g["new"])
        got, fast = tokens_per_s(patched, ids, g["new"])
    return [{"bench": "generate", **g, "transformers_tokens_per_s": base,
             "patched_tokens_per_s": fast,
             "same_tokens": int((got == want).all(1).sum())}]


BENCHES = {"decode": decode_rows, "graph": graph_rows, "prefill": prefill_rows,
           "minimax": minimax_rows, "generate": generate_rows}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="*", choices=list(BENCHES), default=list(BENCHES))
    p.add_argument("--batch", type=int, nargs="*", default=[1, 8, 64, 128, 256])
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--slots", type=int, default=1024)
    p.add_argument("--prefill-lens", type=int, nargs="*",
                   default=[1, 1023, 4096, 8192, 12288, 16384, 16384, 7168])
    p.add_argument("--minimax-heads", type=int, default=64)
    p.add_argument("--minimax-n", type=int, default=4096)
    p.add_argument("--json", default="bench/results/serving.json")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU")
    args = p.parse_args(argv)
    device = torch.device("cpu" if args.cpu_smoke or not torch.cuda.is_available() else "cuda")
    args.dtype = BF16 if device.type == "cuda" else torch.float32
    args.generate = dict(batch=8, prompt=64, new=64, heads=4, head_dim=64, layers=4)
    if device.type == "cpu":
        args.batch, args.heads, args.dim, args.slots = [1, 4], 2, 32, 16
        args.prefill_lens, args.minimax_heads, args.minimax_n = [1, 30, 97], 2, 64
        args.generate.update(batch=2, prompt=8, new=4, heads=2, head_dim=32, layers=2)
        args.only = [b for b in args.only if b != "graph"]
    bench = timer(device)
    rows = []
    for name in args.only:
        for row in BENCHES[name](args, device, bench):
            print("  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in row.items()), flush=True)
            rows.append(row)
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                   "cuda_serving": cuda_backend.SERVING, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
