"""16-bit accuracy of the CUDA kernels' d slope against the float64 truth (issue 13's measure).

    python bench/dslope_accuracy.py                       # the table below, about a minute
    python bench/dslope_accuracy.py --n 1024 --d 64 --dtype bfloat16
    python bench/dslope_accuracy.py --time            # the backward's cost of d slope at W
    python bench/dslope_accuracy.py --time --d 64     # ... with D = E = 64

Calls the C++ op `lightning_attention_C::bwd` directly and sums its per-token terms:
d slope = −Σ_{batch, tokens} τ per head (the contract of the terms). Compares with d slope of
the float64 plain quadratic form on the same 16-bit inputs (tests/utils.truth), as
error = max_h |g − g64| / max_h |g64|, for ALiBi slopes, random `do`, H = 4, B = 1, and per N:
plain; packed sequences (an empty and a length-1 one among them) with an initial state and a
loss on the final state; the same with short forced segments (the multi-segment plan: pass 1,
the scan of states and moments, pass 2). Exits with 1 if any error is above --limit (1%).
With --time: median ms of the backward op with and without the d slope terms at W (bf16,
H = 32, D = E = 128, B·N = 65,536), or at the head dims of --d.
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import lightning_attention  # noqa: E402,F401  (loads the extension's ops)
from tests.utils import make_inputs, rand_state, truth  # noqa: E402

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def alibi(H, device):
    return torch.tensor([2.0 ** (-8.0 * (h + 1) / H) for h in range(H)], device=device)


def packed(N):
    """Offsets of packed sequences over N tokens: empty, length 1, and the rest in three."""
    a, b = N // 3, 2 * N // 3
    return [0, 0, 1, a, b, N]


def error(dtype, N, D, case, H=4, seed=0):
    torch.manual_seed(seed)
    dev = "cuda"
    q, k, v = make_inputs(1, H, N, D, D, dtype=dtype, device=dev)
    do = torch.randn(1, H, N, D, device=dev).to(dtype)
    slope = alibi(H, dev)
    scale = D ** -0.5
    cu = s0 = dfinal = None
    seg_len = None
    if case != "plain":
        offsets = packed(N)
        cu = torch.tensor(offsets, dtype=torch.int32, device=dev)
        s0 = rand_state(len(offsets) - 1, H, D, D, dev)
        dfinal = torch.randn(len(offsets) - 1, H, D, D, device=dev) * 0.1
        if case == "segments":
            seg_len = 256
    out = torch.ops.lightning_attention_C.bwd(do, dfinal, q, k, v, slope, scale, s0, cu, True,
                                             seg_len)
    g = -out[4].double().sum(dim=(0, 2))
    g64 = truth(q, k, v, slope, scale, s0, cu, do, dfinal)[2][3]
    return ((g - g64).abs().max() / g64.abs().max()).item()


def backward_ms(N, need_dslope, H=32, D=128, tokens=65536, reps=20):
    B = tokens // N
    q, k, v = make_inputs(B, H, N, D, D, dtype=torch.bfloat16, device="cuda")
    do = torch.randn_like(v)
    slope = alibi(H, "cuda")
    call = lambda: torch.ops.lightning_attention_C.bwd(do, None, q, k, v, slope, 1.0, None,  # noqa: E731
                                                       None, need_dslope, None)
    for _ in range(3):
        call()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        call()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[reps // 2]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="*", default=[1024, 16384, 65536])
    ap.add_argument("--d", type=int, nargs="*", default=None, help="default 64 128 (--time: 128)")
    ap.add_argument("--dtype", nargs="*", default=list(DTYPES), choices=list(DTYPES))
    ap.add_argument("--limit", type=float, default=0.01)
    ap.add_argument("--time", action="store_true")
    args = ap.parse_args()
    if args.time:
        for D in args.d or [128]:
            for N in (1024, 65536):
                fixed, learn = backward_ms(N, False, D=D), backward_ms(N, True, D=D)
                print(f"W D={D} N={N}: backward {fixed:.3f} ms, with d slope {learn:.3f} ms "
                      f"({learn / fixed:.2f}x)")
        return
    args.d = args.d or [64, 128]
    worst = 0.0
    print(f"{'dtype':9} {'N':>6} {'D':>4} {'case':9} {'error':>9} {'s':>5}")
    for name in args.dtype:
        for N in args.n:
            for D in args.d:
                # the packed cases at 64K add little to 16K and cost the truth's time
                for case in ("plain",) if N > 16384 else ("plain", "packed", "segments"):
                    t = time.time()
                    err = error(DTYPES[name], N, D, case)
                    worst = max(worst, err)
                    print(f"{name:9} {N:6} {D:4} {case:9} {err:9.2e} {time.time() - t:5.1f}",
                          flush=True)
    print(f"worst {worst:.2e} (limit {args.limit:.0e})")
    sys.exit(0 if worst <= args.limit else 1)


if __name__ == "__main__":
    main()
