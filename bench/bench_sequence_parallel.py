"""Sequence parallelism: one sequence on 1 GPU vs split across P GPUs (lightning_attn_sp).

    torchrun --nproc-per-node 2 bench/bench_sequence_parallel.py          # N = 256K, 512K
    torchrun --nproc-per-node 2 bench/bench_sequence_parallel.py --n 1048576 --iters 5
    torchrun --nproc-per-node 2 bench/bench_sequence_parallel.py --cpu-smoke   # gloo, tiny

bf16, B = 1, H = 32, D = E = 128, ALiBi slopes, by default. For every N: rank 0 alone runs
lightning_attn on all N tokens (the 1-GPU row), then every rank runs lightning_attn_sp on its
N/P tokens (the P-GPU row). Median ms of the forward and of forward+backward (CUDA events;
a step of the P-GPU row counts as long as its slowest rank, every step starting after a
barrier), tokens/s, the P-GPU time over the 1-GPU time (the issue's target: at most 0.55 at
512K on 2 GPUs), peak memory per GPU, and for the P-GPU rows the time of the same local
slices without the state exchange (the floor the exchange can approach). Prints a table,
writes JSON (--out).
"""
import argparse
import datetime
import json
import os
import statistics
import time

import torch
import torch.distributed as dist

import lightning_attention as la
from lightning_attention import dispatch
from lightning_attention.distributed import lightning_attn_sp

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class Clock:
    """ms of one call: CUDA events on a GPU, wall clock on the CPU."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3


def inputs(n, args, device, seed):
    g = torch.Generator(device=device).manual_seed(seed)
    dtype = DTYPES[args.dtype]
    shape = (1, args.heads, n, args.dim)
    q, k, v = (torch.randn(shape, generator=g, device=device).mul_(args.dim ** -0.5).to(dtype)
               .requires_grad_() for _ in range(3))
    do = torch.randn(shape, generator=g, device=device).to(dtype)
    return q, k, v, do


def measure(fn, q, k, v, do, args, clock, group, world):
    """(median fwd ms, median fwd+bwd ms): each step the max over the `world` ranks of `group`
    (world 1: this rank alone, no collective)."""
    def step(backward):
        for x in (q, k, v):
            x.grad = None
        o = fn(q, k, v)
        if backward:
            o.backward(do)

    times = {False: [], True: []}
    for backward in (False, True):
        for i in range(args.warmup + args.iters):
            if world > 1:
                dist.barrier(group=group)
            if clock.cuda:
                torch.cuda.synchronize()
            ms = clock(lambda: step(backward))
            if i >= args.warmup:
                times[backward].append(ms)
    fwd, both = (torch.tensor(times[b], dtype=torch.float64) for b in (False, True))
    if world > 1:
        stacked = torch.stack([fwd, both]).to(q.device)
        dist.all_reduce(stacked, op=dist.ReduceOp.MAX, group=group)
        fwd, both = stacked.cpu()
    return statistics.median(fwd.tolist()), statistics.median(both.tolist())


def peak_gb(device):
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=[262144, 524288], help="sequence lengths")
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--dim", type=int, default=128, help="D = E")
    p.add_argument("--dtype", choices=DTYPES, default="bf16")
    p.add_argument("--backend", default=None, help="the local op's backend (default: auto)")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                 "results", "sequence_parallel.json"))
    p.add_argument("--cpu-smoke", action="store_true",
                   help="gloo on the CPU with tiny sizes (checks the script, times nothing useful)")
    args = p.parse_args()
    if args.cpu_smoke:
        args.n, args.heads, args.dim, args.dtype = [512, 1000], 2, 32, "fp32"
        args.iters, args.warmup = 2, 1

    cuda = torch.cuda.is_available() and not args.cpu_smoke
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    device = torch.device("cuda" if cuda else "cpu")
    clock = Clock(device)
    slope = la.build_slopes(args.heads, device=device)
    probe = torch.empty(1, args.heads, 1, args.dim, device=device, dtype=DTYPES[args.dtype])
    backend = dispatch.select(args.backend, probe, probe, probe).name
    card = torch.cuda.get_device_name(device) if cuda else "cpu"

    rows = []
    for n in args.n:
        # one GPU: rank 0 runs the whole sequence while the others wait
        reset_peak(device)
        if rank == 0:
            q, k, v, do = inputs(n, args, device, seed=n)
            fwd, both = measure(lambda q, k, v: la.lightning_attn(q, k, v, slope, backend=backend),
                                q, k, v, do, args, clock, None, 1)
            rows.append(dict(n=n, gpus=1, tokens_per_gpu=n, fwd_ms=fwd, fwd_bwd_ms=both,
                             peak_gb=peak_gb(device)))
            del q, k, v, do
        dist.barrier()
        if world == 1:
            continue
        # P GPUs: an even split (the last rank takes the remainder)
        reset_peak(device)
        local = n // world if rank < world - 1 else n - (world - 1) * (n // world)
        q, k, v, do = inputs(local, args, device, seed=n + 1 + rank)
        fwd, both = measure(lambda q, k, v: lightning_attn_sp(q, k, v, slope, backend=backend),
                            q, k, v, do, args, clock, dist.group.WORLD, world)
        peak = torch.tensor([peak_gb(device) or 0.0], device=device)
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        # the same slices without the exchange: what a free state exchange would cost
        local_fwd, local_both = measure(
            lambda q, k, v: la.lightning_attn(q, k, v, slope, backend=backend),
            q, k, v, do, args, clock, None, 1)
        local = torch.tensor([local_fwd, local_both], dtype=torch.float64, device=device)
        dist.all_reduce(local, op=dist.ReduceOp.MAX)
        rows.append(dict(n=n, gpus=world, tokens_per_gpu=n // world, fwd_ms=fwd, fwd_bwd_ms=both,
                         peak_gb=peak.item() if cuda else None,
                         local_only_fwd_ms=local[0].item(), local_only_fwd_bwd_ms=local[1].item()))
        del q, k, v, do

    if rank == 0:
        report(rows, args, backend, card, world)
    dist.destroy_process_group()


def report(rows, args, backend, card, world):
    one = {r["n"]: r for r in rows if r["gpus"] == 1}
    print(f"\nlightning_attn_sp: {card} x{world}, {args.dtype}, B=1, H={args.heads}, "
          f"D=E={args.dim}, backend {backend}, torch {torch.__version__}, "
          f"{datetime.date.today().isoformat()}")
    head = (f"{'N':>8} {'GPUs':>4} {'fwd ms':>9} {'fwd+bwd ms':>11} {'Mtok/s':>8} "
            f"{'vs 1 GPU':>8} {'peak GB/GPU':>11} {'local only fwd / fwd+bwd ms':>28}")
    print(head)
    print("-" * len(head))
    for r in rows:
        r["mtok_per_s"] = r["n"] / r["fwd_bwd_ms"] / 1e3
        r["ratio_fwd_bwd"] = r["fwd_bwd_ms"] / one[r["n"]]["fwd_bwd_ms"]
        r["ratio_fwd"] = r["fwd_ms"] / one[r["n"]]["fwd_ms"]
        peak = f"{r['peak_gb']:.1f}" if r["peak_gb"] is not None else "-"
        local = (f"{r['local_only_fwd_ms']:.2f} / {r['local_only_fwd_bwd_ms']:.2f}"
                 if "local_only_fwd_ms" in r else "")
        print(f"{r['n']:>8} {r['gpus']:>4} {r['fwd_ms']:>9.2f} {r['fwd_bwd_ms']:>11.2f} "
              f"{r['mtok_per_s']:>8.2f} {r['ratio_fwd_bwd']:>8.3f} {peak:>11} {local:>28}")
    split = [r for r in rows if r["gpus"] > 1]
    if split:
        last = max(split, key=lambda r: r["n"])
        print(f"\nfwd+bwd on {last['gpus']} GPUs / 1 GPU at N={last['n']}: "
              f"{last['ratio_fwd_bwd']:.3f} (issue 7 target: <= 0.55)")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(dict(card=card, gpus=world, date=datetime.date.today().isoformat(),
                       torch=torch.__version__, backend=backend, dtype=args.dtype,
                       heads=args.heads, dim=args.dim, iters=args.iters, warmup=args.warmup,
                       rows=rows), f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
