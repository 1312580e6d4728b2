"""One forward+backward of workload W through the public API inside the profiler's range, at
N = 1K (B = 64) and 64K (B = 1), for Nsight Compute (`--heads 64 --dim 64`: W's other shape;
`--n`: other lengths, B = 65536 / N; `--layout bhnd`: each head's tokens contiguous, instead of
the (B, N, H, D) memory of a model's projections; `--dslope`: a learnable slope, so that the dq
sweep runs its d slope terms):

    ncu --clock-control none --profile-from-start off -k regex:la_ \
        --section SpeedOfLight --section WarpStateStats --section SchedulerStats \
        --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
        --csv --page details python3 bench/ncu_step.py > ncu.csv

Two unprofiled steps come first (compilation, allocator), so the range holds each kernel of
one step once. `python3 bench/ncu_step.py --summary ncu.csv` prints each profiled kernel's
duration and DRAM throughput, in launch order, from such a CSV (no GPU needed).
"""
import argparse
import csv

_US = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}


def summary(path):
    """(kernel, µs, DRAM %) per profiled kernel of an ncu `--csv --page details` file."""
    rows = {}
    with open(path, newline="") as f:
        lines = [line for line in f if line.startswith('"')]  # ncu's own log lines are not CSV
    for r in csv.DictReader(lines):
        k = rows.setdefault(r["ID"], {"kernel": r["Kernel Name"].split("(")[0].split("<")[0]
                                      .replace("void ", "")})
        if r["Metric Name"] == "Duration":
            k["us"] = float(r["Metric Value"].replace(",", "")) * _US[r["Metric Unit"]]
        elif r["Metric Name"] == "DRAM Throughput":
            k["dram"] = float(r["Metric Value"].replace(",", ""))
    ordered = sorted(rows.items(), key=lambda x: int(x[0]))
    return [(k["kernel"], k.get("us"), k.get("dram")) for _, k in ordered]


def step(H, D, ns, layout, dslope):
    import torch

    import lightning_attention as la

    for N in ns:
        B = 65536 // N
        shape = (B, N, H, D) if layout == "bnhd" else (B, H, N, D)
        q, k, v, do = (torch.randn(shape, device="cuda", dtype=torch.bfloat16)
                       .mul_(D ** -0.25 if i < 2 else 1.0) for i in range(4))
        if layout == "bnhd":
            q, k, v, do = (x.transpose(1, 2) for x in (q, k, v, do))
        for x in (q, k, v):
            x.requires_grad_(True)
        slope = la.build_slopes(H, device="cuda").requires_grad_(dslope)
        for _ in range(2):
            la.lightning_attn(q, k, v, slope, backend="cuda").backward(do)
        torch.cuda.synchronize()
        torch.cuda.profiler.start()
        la.lightning_attn(q, k, v, slope, backend="cuda").backward(do)
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--summary", metavar="CSV", help="summarise an ncu CSV instead of profiling")
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--dim", type=int, default=128, help="D = E")
    p.add_argument("--n", type=int, nargs="+", default=[1024, 65536], help="B = 65536 / N")
    p.add_argument("--layout", choices=["bnhd", "bhnd"], default="bnhd")
    p.add_argument("--dslope", action="store_true", help="a learnable slope")
    args = p.parse_args()
    if args.summary:
        for kernel, us, dram in summary(args.summary):
            print(f"{kernel:<28}{us if us is not None else float('nan'):10.1f} us"
                  f"{dram if dram is not None else float('nan'):7.1f} % DRAM")
    else:
        step(args.heads, args.dim, args.n, args.layout, args.dslope)
