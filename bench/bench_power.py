"""Energy per call under sustained load: what the card's power limit leaves of each kernel.

    python bench/bench_power.py [--seconds 2] [--n 16384 65536] [--heads 32 --dim 128]
                                [--dtype bf16] [--dslope] [--no-peers] [--no-reference]

Each workload runs back to back for --seconds (the card reaches its power limit within a
fraction of a second when the work keeps the tensor cores and HBM busy together) while NVML
is sampled every 10 ms. Printed per workload: ms per call in the first and the last 100 ms
chunk (cool card, then sustained), the median SM clock and power over the second half, and
the energy per call (power x sustained time) and above idle ((power - idle) x time).
Workloads: idle, a 1 GiB device copy (energy per byte moved), a bf16 8192^3 matmul (per
FLOP), and workload W (bf16, H = 32, D = E = 128, B·N = 65,536; --heads, --dim change it)
forward and forward+backward on our CUDA backend (and fla's chunk_simple_gla when importable)
at each --n (--dtype fp16 for float16 inputs); --dslope adds our forward+backward with a learnable slope.
"""
import argparse
import statistics
import time

import torch

import lightning_attention as la
from bench_speed import DTYPES, GpuSampler, ours, peers, rand

CHUNK_MS = 100.0


def sustained(fn, seconds):
    """Runs fn back to back for `seconds`; returns (first chunk ms/call, last chunk ms/call,
    median clock MHz, median power W over the second half)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    per_chunk = max(1, int(CHUNK_MS / max((time.perf_counter() - t) * 1e3, 1e-3)))
    chunks = []
    with GpuSampler(torch.device("cuda")) as gpu:
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(per_chunk):
                fn()
            b.record()
            b.synchronize()
            chunks.append(a.elapsed_time(b) / per_chunk)
    half = gpu.samples[len(gpu.samples) // 2:]
    clock = statistics.median(s[0] for s in half)
    power = statistics.median(s[2] for s in half)
    return chunks[0], chunks[-1], clock, power


def workloads(args):
    dev = torch.device("cuda")
    if not args.no_reference:
        yield from references(dev)
    impls = {"ours cuda": ours("cuda")}
    if not args.no_peers:
        impls.update({name: impl for name, impl in peers().items() if name.startswith("fla")})
    H, D, dtype = args.heads, args.dim, DTYPES[args.dtype]
    for N in args.n:
        B = args.tokens // N
        for name, (fn, layout) in impls.items():
            q, k = (rand(B, H, N, D, layout, dtype, dev, D ** -0.5) for _ in range(2))
            v = rand(B, H, N, D, layout, dtype, dev)
            do = rand(B, H, N, D, layout, dtype, dev).detach()
            slope = la.build_slopes(H, device=dev)
            learnable = slope.clone().requires_grad_()

            def fwd():
                with torch.no_grad():
                    fn(q, k, v, slope)

            def fwdbwd(s=slope):
                q.grad = k.grad = v.grad = s.grad = None
                fn(q, k, v, s).backward(do)

            tag = f"N={N}" + ("" if args.dtype == "bf16" else f" {args.dtype}")
            yield f"{name} fwd {tag}", fwd
            yield f"{name} fwd+bwd {tag}", fwdbwd
            if args.dslope and name == "ours cuda":
                yield f"{name} fwd+bwd, d slope {tag}", lambda: fwdbwd(learnable)


def references(dev):
    src = torch.empty(1 << 30, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    yield "copy 1 GiB (2 GiB moved)", lambda: dst.copy_(src)
    a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    yield "matmul bf16 8192^3 (1.1 TFLOP)", lambda: torch.mm(a, b)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--n", type=int, nargs="+", default=[16384, 65536])
    ap.add_argument("--tokens", type=int, default=65536, help="B·N per call")
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--dim", type=int, default=128, help="D = E")
    ap.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    ap.add_argument("--dslope", action="store_true", help="also our fwd+bwd with a learnable slope")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--no-reference", action="store_true", help="without the copy and the matmul")
    args = ap.parse_args()
    with GpuSampler(torch.device("cuda")) as gpu:
        time.sleep(1.0)
    idle = statistics.median(s[2] for s in gpu.samples) if gpu.samples else float("nan")
    print(f"{torch.cuda.get_device_name()}, idle {idle:.0f} W; ms/call first / last 100 ms chunk, "
          f"then the second half's medians")
    print(f"{'workload':34} {'cool ms':>8} {'hot ms':>8} {'MHz':>5} {'W':>5} {'mJ/call':>8} {'above idle':>10}")
    for name, fn in workloads(args):
        first, last, clock, power = sustained(fn, args.seconds)
        print(f"{name:34} {first:8.3f} {last:8.3f} {clock:5.0f} {power:5.0f} {power * last:8.2f} "
              f"{(power - idle) * last:10.2f}", flush=True)
        time.sleep(1.0)  # let the card settle between workloads


if __name__ == "__main__":
    main()
