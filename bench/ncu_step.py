"""One forward+backward of workload W through the public API inside the profiler's range, at
N = 1K (B = 64) and 64K (B = 1), for Nsight Compute:

    ncu --clock-control none --profile-from-start off -k regex:la_ \
        --section SpeedOfLight --section WarpStateStats --section SchedulerStats \
        --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
        --csv --page details python3 bench/ncu_step.py > ncu.csv

Two unprofiled steps come first (compilation, allocator), so the range holds each kernel of
one step once.
"""
import torch

import lightning_attention as la

H, D = 32, 128
for N in (1024, 65536):
    B = 65536 // N
    q, k, v, do = (torch.randn(B, N, H, D, device="cuda", dtype=torch.bfloat16)
                   .mul_(D ** -0.25 if i < 2 else 1.0).transpose(1, 2) for i in range(4))
    for x in (q, k, v):
        x.requires_grad_(True)
    slope = la.build_slopes(H, device="cuda")
    for _ in range(2):
        la.lightning_attn(q, k, v, slope, backend="cuda").backward(do)
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    la.lightning_attn(q, k, v, slope, backend="cuda").backward(do)
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()
