"""Speed and memory of lightning_attn's backends beside the peers, on workload W.

    python bench/bench_speed.py                       # W: bf16, H=32, D=E=128, B·N=65,536
    python bench/bench_speed.py --n 1024 65536 --dim 64 --heads 64
    python bench/bench_speed.py --cpu-smoke           # tiny sizes on the CPU
    python bench/bench_speed.py --decode              # one decode step, B=128, H=32, D=E=128
    python bench/bench_speed.py --plot speed.png      # also plot tokens/s and memory against N
    python bench/bench_speed.py --replot a.json b.json --plot speed.png   # plot saved runs

For every N (B = tokens / N): median ms of the forward and of forward+backward, tokens/s,
the ratio to the memory floor (each input read once, each output written once, at the copy
rate measured in the same run) and the peak memory beyond the inputs. Peers join when
importable: lightning-attn 0.0.5 (`lightning_attn2`), fla-core (`chunk_simple_gla`),
and PyTorch SDPA causal softmax attention. Prints a table, writes JSON. On a GPU each row
starts after --settle seconds of idle (default 1): the kernels that keep HBM and the tensor
cores busy hold the card at its power limit, which lowers the clock for whatever runs next
(bench_power.py), so without the pause a row's time would depend on the rows before it. Each
row ends with the card's SM clock, temperature and power while it ran (medians of samples taken
during the timed calls), where pynvml (nvidia-ml-py) is importable.
"""
import argparse
import json
import os
import statistics
import threading
import time

import torch
import torch.nn.functional as F

import lightning_attention as la

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def peers():
    """{name: (fn(q, k, v, slope) -> o, layout)} for the peers importable here; q, k, v are
    (B, H, N, D) views of memory in the peer's native layout ('bnhd' or 'bhnd')."""
    out = {}
    try:
        from fla.ops.simple_gla import chunk_simple_gla

        def fla(q, k, v, slope):
            o, _ = chunk_simple_gla(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                    g_gamma=-slope, scale=1.0)
            return o.transpose(1, 2)
        out["fla chunk_simple_gla"] = (fla, "bnhd")
    except Exception:
        pass
    try:
        from lightning_attn.ops import lightning_attn2
        out["lightning-attn 0.0.5"] = (
            lambda q, k, v, slope: lightning_attn2(q, k, v, slope.view(-1, 1, 1)), "bhnd")
    except Exception:
        pass
    out["sdpa causal softmax"] = (
        lambda q, k, v, slope: F.scaled_dot_product_attention(q, k, v, is_causal=True), "bhnd")
    return out


def ours(backend):
    """Ours on (B, N, H, D) memory, the usual layout of a model's projections."""
    return lambda q, k, v, slope: la.lightning_attn(q, k, v, slope, backend=backend), "bnhd"


def timer(device):
    """median ms of fn() (CUDA events through triton's do_bench on a GPU)."""
    if device.type == "cuda":
        from triton.testing import do_bench
        return lambda fn, grads: do_bench(fn, warmup=25, rep=200, grad_to_none=grads,
                                          return_mode="median")

    def cpu(fn, grads, reps=5):
        times = []
        for _ in range(reps):
            for g in grads:
                g.grad = None
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
        return statistics.median(times)
    return cpu


def copy_rate(device):
    """Bytes read + written per second by a large device copy (the memory floor's rate)."""
    if device.type != "cuda":
        return None
    src = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = timer(device)(lambda: dst.copy_(src), [])
    return 2 * src.numel() / (ms * 1e-3)


def rand(B, H, N, X, layout, dtype, device, scale=1.0):
    """A (B, H, N, X) leaf tensor in (B, N, H, X) memory for 'bnhd', else contiguous."""
    if layout == "bnhd":
        x = torch.randn(B, N, H, X, device=device, dtype=dtype).mul_(scale).transpose(1, 2)
    else:
        x = torch.randn(B, H, N, X, device=device, dtype=dtype).mul_(scale)
    return x.detach().requires_grad_()


def measure(impl, B, H, N, D, E, dtype, device, bench, do_bwd, dslope=False):
    fn, layout = impl
    q, k = (rand(B, H, N, D, layout, dtype, device, D ** -0.5) for _ in range(2))
    v = rand(B, H, N, E, layout, dtype, device)
    do = rand(B, H, N, E, layout, dtype, device).detach()
    slope = la.build_slopes(H, device=device).requires_grad_(dslope)
    with torch.no_grad():
        fwd_ms = bench(lambda: fn(q, k, v, slope), [])
    res = {"fwd_ms": fwd_ms}
    if do_bwd:
        res["fwdbwd_ms"] = bench(lambda: fn(q, k, v, slope).backward(do),
                                 [q, k, v] + ([slope] if dslope else []))
        if device.type == "cuda":
            q.grad = k.grad = v.grad = None
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            fn(q, k, v, slope).backward(do)
            torch.cuda.synchronize()
            res["extra_mb"] = (torch.cuda.max_memory_allocated() - before) / 2 ** 20
    return res


class GpuSampler:
    """The card's SM clock (MHz), temperature (C) and power (W), read through NVML (pynvml,
    from nvidia-ml-py) every 10 ms on a thread while the `with` block runs; `summary()` gives
    their medians ({} off the GPU, or where pynvml or NVML is missing). Read during the timed
    calls, not after them: a shape that reads slower in one run than in another can be told
    apart from a card that clocked down (power cap, heat) while running it."""

    def __init__(self, device, period_s=0.01):
        self.on, self.period_s, self.samples = device.type == "cuda", period_s, []
        self._stop, self._thread = threading.Event(), None

    def _read(self):
        return (torch.cuda.clock_rate(), torch.cuda.temperature(), torch.cuda.power_draw() / 1000)

    def _run(self):
        while not self._stop.wait(self.period_s):
            self.samples.append(self._read())

    def __enter__(self):
        if self.on:
            try:
                self._read()
            except Exception:  # no pynvml, or NVML unavailable
                return self
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()

    def summary(self):
        if not self.samples:
            return {}
        clock, temp, power = (statistics.median(x) for x in zip(*self.samples))
        return {"sm_clock_mhz": round(clock), "temperature_c": round(temp), "power_w": power}


def decode_table(args, device, names):
    """One decode step per backend: the float32 state is read and written once, so the
    floor is a copy of the state's bytes."""
    B, H, D = args.decode_batch, args.heads, args.dim
    q, k, v = (torch.randn(B, H, D, device=device, dtype=DTYPES[args.dtype]) for _ in range(3))
    state = torch.randn(B, H, D, D, device=device)
    slope = la.build_slopes(H, device=device)
    bench = timer(device)
    floor = bench(lambda: state.clone(), []) if device.type == "cuda" else None
    print(f"decode, B={B}, H={H}, D=E={D}, {args.dtype}" +
          (f"; floor (state copy) {floor:.4f} ms" if floor else ""))
    rows = []
    for name in names:
        ms = bench(lambda: la.lightning_attn_decode(q, k, v, state, slope, backend=name), [])
        rows.append({"impl": f"lightning_attention {name}", "decode_ms": ms, "floor_ms": floor})
        print(f"  {name:<8}{ms:9.4f} ms" + (f"  {ms / floor:5.2f}x floor" if floor else ""))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 32768, 65536])
    p.add_argument("--tokens", type=int, default=65536, help="B·N per step")
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--dim", type=int, default=128, help="D = E")
    p.add_argument("--dtype", choices=DTYPES, default="bf16")
    p.add_argument("--backends", nargs="+", default=None,
                   help="our backends to time (default: cuda and triton where available; torch on CPU)")
    p.add_argument("--no-peers", action="store_true")
    p.add_argument("--fwd-only", action="store_true")
    p.add_argument("--dslope", action="store_true",
                   help="a learnable slope: the backward also computes d slope (with --no-peers)")
    p.add_argument("--settle", type=float, default=1.0,
                   help="seconds of idle before each row on a GPU (0: none)")
    p.add_argument("--json", default="bench/results/speed.json")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU")
    p.add_argument("--decode", action="store_true", help="time one decode step instead")
    p.add_argument("--decode-batch", type=int, default=128)
    p.add_argument("--plot", default=None, help="write a PNG: tokens/s and memory against N")
    p.add_argument("--replot", nargs="+", default=None, metavar="JSON",
                   help="plot rows saved by earlier runs (later files win) instead of measuring")
    args = p.parse_args(argv)
    if args.replot:
        meta, rows = load(args.replot)
        plot(meta, rows, args.plot or "bench/results/speed.png")
        return rows

    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu_smoke else "cpu")
    if device.type == "cpu":
        args.n, args.tokens, args.heads, args.dim = [128, 512], 1024, 2, 32
        args.dtype = "fp32"
    dtype = DTYPES[args.dtype]
    avail = {k for k, why in la.backends().items() if why is None}
    names = args.backends or [b for b in ("cuda", "triton") if b in avail and device.type == "cuda"] or ["torch"]
    card = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    rate = copy_rate(device)
    H, D = args.heads, args.dim
    meta = {"card": card, "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
            "dtype": args.dtype, "H": H, "D": D, "E": D, "tokens": args.tokens,
            "copy_rate_TBps": rate / 1e12 if rate else None, "version": la.__version__}
    print(f"\n{card}, {meta['date']}, torch {torch.__version__}, {args.dtype}, H={H}, D=E={D}, "
          f"B·N={args.tokens}" + (f", copy {meta['copy_rate_TBps']:.2f} TB/s" if rate else ""))
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)

    def save(rows):  # after every row, so that a run cut short keeps what it measured
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
    if args.decode:
        rows = decode_table(args, device, names)
        save(rows)
        return rows
    impls = {f"lightning_attention {b}": ours(b) for b in names}
    if not args.no_peers and device.type == "cuda":
        impls.update(peers())
    bench = timer(device)
    elt = torch.finfo(dtype).bits // 8
    head = (f"{'impl':<28}{'N':>7}{'B':>5}{'fwd ms':>9}{'f+b ms':>9}{'Mtok/s':>9}"
            f"{'fwd/floor':>10}{'f+b/floor':>10}{'extra MB':>10}")
    print(head)
    print("-" * len(head))
    rows = []
    for N in args.n:
        B = max(1, args.tokens // N)
        tensor_bytes = B * N * H * D * elt
        for name, impl in impls.items():
            if device.type == "cuda":
                time.sleep(args.settle)  # every row starts from the same card state
            sampler = GpuSampler(device)
            try:
                with sampler:
                    r = measure(impl, B, H, N, D, D, dtype, device, bench, not args.fwd_only,
                                args.dslope)
            except Exception as e:  # a peer that cannot run this shape: note it, go on
                r = {"error": f"{type(e).__name__}: {str(e)[:120]}"}
            r.update(impl=name, N=N, B=B, **sampler.summary())
            if "fwd_ms" in r:
                r["tokens_per_s"] = B * N / ((r.get("fwdbwd_ms") or r["fwd_ms"]) * 1e-3)
                if rate:  # fwd: q, k, v, o; bwd: q, k, v, do, dq, dk, dv
                    r["fwd_floor_x"] = r["fwd_ms"] / (4 * tensor_bytes / rate * 1e3)
                    if "fwdbwd_ms" in r:
                        r["fwdbwd_floor_x"] = r["fwdbwd_ms"] / (11 * tensor_bytes / rate * 1e3)
            rows.append(r)
            save(rows)
            print(format_row(r), flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if args.plot:
        plot(meta, rows, args.plot)
    return rows


def load(paths):
    """(meta of the first file, rows of all files; a later file's (impl, N) replaces)."""
    meta, rows = None, {}
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        meta = meta or data["meta"]
        rows.update({(r["impl"], r["N"]): r for r in data["rows"]})
    return meta, list(rows.values())


def plot(meta, rows, path):
    """Two panels like the paper's figure: forward+backward tokens/s and the extra memory
    of forward+backward against N, one line per implementation."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax_speed, ax_mem) = plt.subplots(1, 2, figsize=(12, 4.5))
    for impl in dict.fromkeys(r["impl"] for r in rows):
        pts = sorted((r["N"], r) for r in rows if r["impl"] == impl and "fwd_ms" in r)
        ns = [n for n, _ in pts]
        ax_speed.plot(ns, [r["tokens_per_s"] / 1e6 for _, r in pts], marker="o", label=impl)
        if any("extra_mb" in r for _, r in pts):
            ax_mem.plot(ns, [r.get("extra_mb", float("nan")) / 1024 for _, r in pts], marker="o",
                        label=impl)
    what = "fwd+bwd" if any("fwdbwd_ms" in r for r in rows) else "fwd"
    for ax, ylabel in ((ax_speed, f"{what} throughput (M tokens/s)"),
                       (ax_mem, f"extra memory of {what} (GiB)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length N (B·N fixed)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    ax_speed.set_yscale("log")
    ax_speed.legend(fontsize=8)
    fig.suptitle(f"{meta['card']}, {meta['date']}, torch {meta['torch']}, {meta['dtype']}, "
                 f"H={meta['H']}, D=E={meta['D']}, B·N={meta['tokens']}")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def format_row(r):
    if "error" in r:
        return f"{r['impl']:<28}{r['N']:>7}{r['B']:>5}  {r['error']}"

    def cell(key, fmt):
        return format(r[key], fmt) if r.get(key) is not None else "-"
    return (f"{r['impl']:<28}{r['N']:>7}{r['B']:>5}{cell('fwd_ms', '.3f'):>9}"
            f"{cell('fwdbwd_ms', '.3f'):>9}{r['tokens_per_s'] / 1e6:>9.1f}"
            f"{cell('fwd_floor_x', '.2f'):>10}{cell('fwdbwd_floor_x', '.2f'):>10}"
            f"{cell('extra_mb', '.0f'):>10}"
            + (f"  {r['sm_clock_mhz']} MHz {r['temperature_c']} C {r['power_w']:.0f} W"
               if "sm_clock_mhz" in r else ""))


if __name__ == "__main__":
    main()
