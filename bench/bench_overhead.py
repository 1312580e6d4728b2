"""Host time per call of lightning_attn at a tiny size, where the Python path (validation,
dispatch, the custom ops, autograd) rather than the kernels sets the time.

    python bench/bench_overhead.py                          # torch backend, CPU
    python bench/bench_overhead.py --device cuda --backend cuda --dtype bfloat16

Prints the median over --calls calls of the forward (no grad) and of forward+backward, in µs,
and writes them as JSON with --json. On a GPU every call is followed by a synchronisation.
"""
import argparse
import json
import statistics
import time

import torch

import lightning_attention as la

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def median_us(fn, calls, sync):
    for _ in range(calls // 10):
        fn()
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="torch")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=DTYPES)
    p.add_argument("--shape", type=int, nargs=4, default=(1, 2, 64, 64), metavar=("B", "H", "N", "D"))
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--json")
    args = p.parse_args()
    torch.set_num_threads(1)
    B, H, N, D = args.shape
    q, k, v = (torch.randn(B, H, N, D, device=args.device, dtype=DTYPES[args.dtype],
                           requires_grad=True) for _ in range(3))
    slope = la.build_slopes(H, device=args.device)
    sync = torch.cuda.synchronize if q.is_cuda else (lambda: None)

    def fwd():
        with torch.no_grad():
            la.lightning_attn(q, k, v, slope, backend=args.backend)

    def fwd_bwd():
        la.lightning_attn(q, k, v, slope, backend=args.backend).float().sum().backward()

    row = {"backend": args.backend, "device": args.device, "dtype": args.dtype,
           "shape": [B, H, N, D], "calls": args.calls,
           "fwd_us": median_us(fwd, args.calls, sync),
           "fwd_bwd_us": median_us(fwd_bwd, args.calls, sync)}
    print(f"{args.backend} on {args.device}, {args.dtype}, (B, H, N, D) = {(B, H, N, D)}: "
          f"forward {row['fwd_us']:.1f} µs, forward+backward {row['fwd_bwd_us']:.1f} µs "
          f"(median of {args.calls} calls)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(row, f, indent=1)


if __name__ == "__main__":
    main()
