"""Decode step of the CUDA backend: B = 128, H = 32, D = E = 128 (fp32 state read and
written once: floor = 2 · 128·32·128·128·4 B / copy rate), median of do_bench."""
import torch
from triton.testing import do_bench

from lightning_attention import cuda as C

B, H, D = 128, 32, 128
q, k, v = (torch.randn(B, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
state = torch.randn(B, H, D, D, device="cuda")
slope = torch.rand(H, device="cuda")
ms = do_bench(lambda: C.decode(q, k, v, state, slope, 1.0), warmup=50, rep=200, return_mode="median")
x = torch.empty(B * H * D * D, device="cuda")
y = torch.empty_like(x)
copy = do_bench(lambda: y.copy_(x), warmup=50, rep=200, return_mode="median")
print(f"decode B={B} H={H} D=E={D}: {ms:.4f} ms; state copy (same bytes) {copy:.4f} ms; "
      f"ratio {ms / copy:.2f}")
