"""Where the CUDA dq sweep's d slope terms go wrong: each token's τ against a float64 model.

    python bench/dslope_tokens.py                     # packed, no initial state, final-state loss
    python bench/dslope_tokens.py --seeds 20 --dtype float16 --initial

The kernels split d log λ over the tokens by their blocks (docs/DSLOPE.md): a token t = b + r
of a 64-token block starting at b (blocks counted from each segment's start) gets its pairs
inside the block, r · q_t·(dq's inter-block part), the block's moment term c <M_b, G> on its
first token and <dS_f, M − S> on the sequence's last. `model` computes exactly that split in
float64 from the same 16-bit inputs, so every token's τ can be compared (fp32 kernels: about
1e-5 of the largest |τ|; the 16-bit copy of S in the r term a little more). Per seed it prints
the relative error of d slope (the tests' measure) and, where a token is off by more than
--tol of the largest |τ|, the worst tokens with their sequence, segment, block and row; and
whether two runs of the op on the same inputs give bitwise-identical terms. Run it once with
and once without LIGHTNING_ATTENTION_SM90=0 to compare the mma.sync and sm_90a
kernels. Defaults: the test case of tests/test_cuda.py::test_feature_cases that failed once
on an H200 (H = 2, N = 1000, D = 64, cu_seqlens = [0, 0, 1, 500, 999, 1000, 1000], scale 0.7,
segments of 128 tokens: what the plan picks for it).
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import lightning_attention  # noqa: E402,F401  (loads the extension's ops)
from tests.utils import make_inputs, rand_slope, rand_state, truth, varlen  # noqa: E402

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def model(q, k, v, do, slope, scale, s0, cu, dfinal, seg_len):
    """τ (H, N) float64 in the kernels' split; q, k, v, do (1, H, N, D); s0, dfinal per
    sequence (or None). Returns τ and, per token, (sequence, segment, block, row)."""
    H, N = q.shape[1], q.shape[2]
    tau = torch.zeros(H, N, dtype=torch.float64)
    where = [None] * N
    f = lambda x: x.double().cpu()  # noqa: E731
    q, k, v, do = f(q[0]), f(k[0]), f(v[0]), f(do[0])
    for h in range(H):
        lam = torch.exp(-f(slope[h]))
        for i, (a, b) in enumerate(zip(cu[:-1], cu[1:])):
            # the dq sweep's state and moment (E × D); M = S = S₀ at the start
            S = f(s0[i, h]).T.clone() if s0 is not None else torch.zeros(v.shape[2], q.shape[2], dtype=torch.float64)
            M = S.clone()
            span = max(b - a, 1) if seg_len is None else seg_len
            blocks = [(seg, c0, min(c0 + 64, sa + span, b))
                      for seg, sa in enumerate(range(a, b, span)) for c0 in range(sa, min(sa + span, b), 64)]
            for seg, t0, t1 in blocks:
                L = t1 - t0
                blk = slice(t0, t0 + L)
                qb, kb, vb, db = q[h, blk], k[h, blk], v[h, blk], do[h, blk]
                r = torch.arange(L, dtype=torch.float64)
                dist = r[:, None] - r[None, :]
                W = torch.where(dist >= 0, lam ** dist.clamp(min=0), torch.zeros(()))
                x = (dist * W * scale * (db @ vb.T) * (qb @ kb.T)).sum(1)
                x += r * scale * lam ** (r + 1) * ((db @ S) * qb).sum(1)
                G = (db * (lam ** (r + 1))[:, None]).T @ qb
                x[0] += scale * (M * G).sum()
                wk = lam ** (L - 1 - r)
                M = lam ** L * (M + L * S) + (vb * (wk * (L - r))[:, None]).T @ kb
                S = lam ** L * S + (vb * wk[:, None]).T @ kb
                if t0 + L == b and dfinal is not None:
                    x[-1] += (f(dfinal[i, h]).T * (M - S)).sum()
                tau[h, blk] = x
                if h == 0:
                    for j in range(L):
                        where[t0 + j] = (i, seg, (t0 - a - seg * span) // 64, j)
    return tau, where


def run(args, seed):
    torch.manual_seed(seed)
    dev, dtype, H, N, D = "cuda", DTYPES[args.dtype], args.h, args.n, args.d
    q, k, v = make_inputs(1, H, N, D, D, dtype=dtype, device=dev)
    slope = rand_slope(H, dev)
    cu = varlen(N)
    s0 = rand_state(len(cu) - 1, H, D, D, dev) if args.initial else None
    do = torch.randn(1, H, N, D, device=dev).to(dtype)
    dfinal = torch.randn(len(cu) - 1, H, D, D, device=dev)
    cut = torch.tensor(cu, dtype=torch.int32, device=dev)
    bwd = torch.ops.lightning_attention_C.bwd
    terms = [bwd(do, dfinal, q, k, v, slope, args.scale, s0, cut, True, args.seg_len)[4][0].double().cpu()
             for _ in range(2)]
    same = torch.equal(terms[0], terms[1])
    g64 = truth(q, k, v, slope, args.scale, s0, cu, do, dfinal)[2][3].cpu()
    g = -terms[0].sum(dim=1)
    err = ((g - g64).abs().max() / g64.abs().max()).item()
    tau, where = model(q, k, v, do, slope, args.scale, s0, cu, dfinal, args.seg_len)
    model_err = ((-tau.sum(1) - g64).abs().max() / g64.abs().max()).item()
    diff = (terms[0] - tau).abs() / tau.abs().max()
    print(f"seed {seed}: slopes {[round(x, 3) for x in slope.tolist()]} d slope {g.tolist()} "
          f"truth {g64.tolist()} error {err:.2e} (model {model_err:.1e}); deterministic: {same}; "
          f"worst token {diff.max().item():.1e} of max|τ|")
    if diff.max() > args.tol:
        flat = diff.flatten().argsort(descending=True)[:args.show]
        for idx in flat.tolist():
            h, t = divmod(idx, N)
            if diff[h, t] <= args.tol:
                break
            print(f"  head {h} token {t} (sequence, segment, block, row) {where[t]}: "
                  f"kernel {terms[0][h, t].item():+.5f} model {tau[h, t].item():+.5f}")
    return err


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtype", choices=DTYPES, default="bfloat16")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--h", type=int, default=2)
    ap.add_argument("--scale", type=float, default=0.7)
    ap.add_argument("--seg-len", type=int, default=128)
    ap.add_argument("--initial", action="store_true", help="an initial state (default: none)")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--tol", type=float, default=1e-3, help="a token's error that is shown")
    ap.add_argument("--show", type=int, default=8)
    args = ap.parse_args()
    worst = max(run(args, s) for s in range(args.seeds))
    print(f"worst d slope error {worst:.2e}")


if __name__ == "__main__":
    main()
