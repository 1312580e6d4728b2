"""Workload W (design.md §6) on the CUDA backend, fla's chunk_simple_gla side by side.

bf16, H = 32, D = E = 128, ALiBi slopes, B·N = 65,536 tokens, inputs (B, N, H, D) passed to
our kernels as BNHD views (no copies). Median of CUDA-event timings (triton do_bench).

    python bench/cuda_speed.py --n 1024 8192 65536 [--json out.json]
"""
import argparse
import json

import torch
from triton.testing import do_bench

import lightning_attention as la
from lightning_attention import cuda as C


def bench(fn, ms=200):
    return do_bench(fn, warmup=50, rep=ms, return_mode="median")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="+", default=[1024, 8192, 65536])
    ap.add_argument("--tokens", type=int, default=65536)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-fla", action="store_true")
    ap.add_argument("--fwd-only", action="store_true", help="time the forward kernel only")
    args = ap.parse_args()
    try:
        from fla.ops.simple_gla import chunk_simple_gla
    except Exception as e:  # fla is optional
        print("fla not importable:", e)
        chunk_simple_gla = None
    if args.no_fla:
        chunk_simple_gla = None
    H, D = args.heads, args.dim
    slope = la.build_slopes(H).float().cuda()
    rows = []
    for N in args.n:
        B = max(1, args.tokens // N)
        q, k, v = (torch.randn(B, N, H, D, device="cuda", dtype=torch.bfloat16) * (D ** -0.5 if i < 2 else 1)
                   for i in range(3))
        do = torch.randn(B, N, H, D, device="cuda", dtype=torch.bfloat16)
        qt, kt, vt, dot = (x.transpose(1, 2) for x in (q, k, v, do))
        r = {"N": N, "B": B}
        r["cuda_fwd"] = bench(lambda: C.fwd(qt, kt, vt, slope, 1.0, None, None, False))
        if args.fwd_only:
            print(f"{N:>6} {B:>3} | fwd {r['cuda_fwd']:.3f} ms", flush=True)
            continue
        r["cuda_bwd"] = bench(lambda: C.bwd(dot, None, qt, kt, vt, slope, 1.0, None, None))
        r["cuda_fwdbwd_kernels"] = r["cuda_fwd"] + r["cuda_bwd"]
        ql, kl, vl = (x.detach().clone().requires_grad_() for x in (qt, kt, vt))

        def step():
            ql.grad = kl.grad = vl.grad = None  # no gradient accumulation in the timing
            o = la.lightning_attn(ql, kl, vl, slope, backend="cuda")
            o.backward(dot)
        r["cuda_fwdbwd_api"] = bench(step)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        r["cuda_extra_mb"] = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
        ql.grad = kl.grad = vl.grad = None
        if chunk_simple_gla is not None:
            g = -slope
            r["fla_fwd"] = bench(lambda: chunk_simple_gla(q, k, v, g_gamma=g, scale=1.0))
            qf, kf, vf = (x.detach().clone().requires_grad_() for x in (q, k, v))

            def fstep():
                qf.grad = kf.grad = vf.grad = None
                o, _ = chunk_simple_gla(qf, kf, vf, g_gamma=g, scale=1.0)
                o.backward(do)
            r["fla_fwdbwd"] = bench(fstep)
            # agreement of the two forwards (fla's o is (B, N, H, D))
            o_fla, _ = chunk_simple_gla(q, k, v, g_gamma=g, scale=1.0)
            o_ours, _ = C.fwd(qt, kt, vt, slope, 1.0, None, None, False)
            r["rel_diff_vs_fla"] = ((o_ours.transpose(1, 2).float() - o_fla.float()).norm()
                                    / o_fla.float().norm()).item()
        rows.append(r)
        print({k: (round(x, 4) if isinstance(x, float) else x) for k, x in r.items()}, flush=True)
        del q, k, v, do, qt, kt, vt, dot, ql, kl, vl
        torch.cuda.empty_cache()
    print(f"\n{'N':>6} {'B':>3} | {'cuda fwd':>8} {'fla fwd':>8} | {'cuda f+b':>8} {'fla f+b':>8} | "
          f"{'kern bwd':>8} {'extra MB':>8}")
    for r in rows:
        print(f"{r['N']:>6} {r['B']:>3} | {r['cuda_fwd']:8.3f} {r.get('fla_fwd', float('nan')):8.3f} | "
              f"{r['cuda_fwdbwd_api']:8.3f} {r.get('fla_fwdbwd', float('nan')):8.3f} | "
              f"{r['cuda_bwd']:8.3f} {r['cuda_extra_mb']:8.0f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
