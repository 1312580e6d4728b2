"""Warmed-up training steps of a small stack of LightningAttention layers between
cudaProfilerStart/Stop, with NVTX ranges, so that profilers capture exactly those steps:

    nsys profile --capture-range=cudaProfilerApi --trace=cuda,nvtx -o la_step \
        python bench/profile_step.py
    nsys stats --report cuda_gpu_kern_sum,nvtx_sum la_step.nsys-rep
    ncu --nvtx --nvtx-include "lightning_attn.fwd.cuda/" --clock-control none \
        -k regex:la_ -c 4 python bench/profile_step.py --steps 1

Each public call opens `lightning_attn.{fwd,bwd,decode}.<backend>` (LIGHTNING_ATTENTION_NVTX=1
is set here); each step is wrapped in a `step <i>` range.
"""
import argparse
import os
import sys

import torch

os.environ.setdefault("LIGHTNING_ATTENTION_NVTX", "1")
import lightning_attention as la


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--dim", type=int, default=1024, help="model width C")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=4096)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--backend", default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("profile_step.py needs a CUDA GPU")

    torch.manual_seed(0)
    layers = [la.LightningAttention(args.dim, args.heads, layer_idx=i, num_layers=args.layers,
                                    backend=args.backend) for i in range(args.layers)]
    model = torch.nn.Sequential(*layers).cuda().to(torch.bfloat16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(args.batch, args.seq, args.dim, device="cuda", dtype=torch.bfloat16)

    def step():
        loss = model(x).float().square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    for i in range(args.steps):
        with torch.cuda.nvtx.range(f"step {i}"):
            step()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()
    print(f"profiled {args.steps} steps of {args.layers} layers, (B, N, C) = "
          f"{(args.batch, args.seq, args.dim)}; the NVTX ranges name the backend")


if __name__ == "__main__":
    main()
