"""The main job: run lightning_attn on the best backend here, check it against the float64
reference, and time that backend on workload W (a few N; on the CPU, tiny sizes).
Finishes in well under 20 s on an H200 and on a laptop CPU, printing each step as it goes.

    python bench/demo.py
"""
import time

import torch

import lightning_attention as la
from lightning_attention import dispatch, reference
import bench_speed

START = time.perf_counter()


def step(msg):
    print(f"[{time.perf_counter() - START:5.1f} s] {msg}", flush=True)


def main():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    step("backends here:")
    for name, why in la.backends().items():
        print(f"  {name:<7} {'available' if why is None else 'unavailable: ' + why}")
    B, H, N, D = (2, 4, 1000, 64) if device == "cuda" else (1, 2, 500, 64)
    q, k, v = (torch.randn(B, H, N, D, device=device) / (D ** 0.5 if i < 2 else 1) for i in range(3))
    q, k, v = (x.to(dtype).requires_grad_() for x in (q, k, v))
    slope = la.build_slopes(H, device=device)
    name = dispatch.select(None, q, k, v).name
    step(f"lightning_attn forward and backward on {name!r}, {dtype}, (B, H, N, D) = "
         f"{(B, H, N, D)} (the first call compiles Triton kernels, if any)")
    o = la.lightning_attn(q, k, v, slope)
    o.float().square().sum().backward()
    step("the float64 reference")
    ref_leaves = [x.detach().double().requires_grad_() for x in (q, k, v)]
    ref, _ = reference.attention_ref(*ref_leaves, slope.double())
    ref.square().sum().backward()
    for what, got, want in [("o", o, ref)] + [(f"d{n}", x.grad, r.grad) for n, x, r in
                                               zip("qkv", (q, k, v), ref_leaves)]:
        err = ((got.double() - want).norm() / want.norm()).item()
        print(f"  {what:<3} relative error vs float64 reference: {err:.2e}")
        assert err < 2e-2, f"{what} is off: {err}"
    step(f"timing {name!r} (bench/bench_speed.py has the full table beside the peers)")
    bench_speed.main(["--cpu-smoke"] if device == "cpu" else
                     ["--backends", name, "--no-peers", "--n", "1024", "8192", "65536",
                      "--json", "bench/results/demo.json"])
    step("done")


if __name__ == "__main__":
    main()
