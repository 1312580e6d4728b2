"""The backends, one folder each (this package is `kernels`, since `la.backends()` is the public
report of what runs here): cuda/ (the kernels of csrc/), triton/ (Triton kernels, on a
GPU or in Triton's CPU interpreter), torch/ (the block form in plain PyTorch). Each folder's
`__init__.py` exposes `BACKEND`, a `Backend` below; lightning_attention/dispatch.py lists them
and picks one per call. No backend imports another: a function a backend lacks is None, and
the dispatcher takes it from the next backend that has it.

The kernel interface. Inputs are clean (lightning_attention/checks.py and ops.py): shapes
and dtypes agree, every tensor is on one device, stride(-1) == 1, no dimension is empty.

    fwd(q, k, v, slope, scale, initial_state, cu_seqlens, output_final_state)
        -> (o, final_state, kept)
    bwd(do, dfinal_state, q, k, v, slope, scale, initial_state, cu_seqlens, need_dslope, kept)
        -> (dq, dk, dv, dinitial_state, dslope_terms)
    decode(q, k, v, state, slope, scale) -> o          (state updated in place)
    state(a, b, slope, scale, to_end) -> float32 (B, H, D, E)
    pool_prefill(q, k, v, slope, scale, cu_seqlens, state_pool, slots, has_state) -> o
    pool_decode(q, k, v, state_pool, slots, slope, scale) -> o

- q, k: (B, H, N, D); v: (B, H, N, E); any strides with stride(-1) == 1.
- slope: None (no decay) or float32 contiguous (H,); the decay is exp(-slope).
- scale: Python float.
- initial_state / dfinal_state: None or float32 contiguous (B, H, D, E), or
  (num_seqs, H, D, E) with cu_seqlens.
- cu_seqlens: None or int32 contiguous (num_seqs + 1,) on q's device; then B == 1.
- o, dq, dk, dv: the dtype and memory layout of q, k, v (layout.empty_like_layout).
- "No state" is an empty float32 tensor, the form the custom ops return (they cannot return
  None): final_state without output_final_state, dinitial_state without initial_state,
  dslope_terms without need_dslope.
- kept: what a forward keeps for its backward, float32 (n, H, D, E), n = 0 when nothing
  (layout.nothing_kept); the same call's bwd takes it back as it is, or None. The cuda and
  triton backends keep each segment's incoming state when a sequence spans several
  segments: the dq sweep of the backward (dq_t = scale · do_t S_tᵀ, S_t the forward's state)
  then starts each segment from it instead of reading k, v once more to rebuild it. n is the
  backend's plan (device-dependent): one D×E state per segment and head, megabytes where
  k, v are gigabytes.
- bwd returns dinitial_state whenever initial_state is given. With need_dslope (slope is not
  None) it returns per-token terms τ, float32 (B, H, N), whose sum over each sequence's tokens
  is that sequence's dL/d log λ (λ = exp(−slope)), its final-state term included; how the
  sum is split across tokens is the backend's (docs/DSLOPE.md: the direct form, formed from
  float32 values of the size of the answer, never a difference of large sums). ops.py sums
  them: d slope = −Σ τ. Tokens outside every sequence of cu_seqlens have no defined τ.
- decode: q, k (B, H, D), v (B, H, E), state (B, H, D, E) float32, o (B, H, E).
- state: a (B, H, N, D), b (B, H, N, E), N ≥ 1; returns Σ_t w_t a_tᵀ b_t with
  w_t = λ^{N-1-t} when to_end (the state a sequence leaves from a zero start: a, b = k, v)
  or scale·λ^{t+1} (the gradient its outputs send to its initial state: a, b = q, do).
  Sequence parallelism (distributed.py) runs it once per direction.
- pool_prefill, pool_decode (serving.py; forward only): states live in `state_pool`, float32
  contiguous (num_slots, H, D, E), and are read and written in place at the int32 `slots`
  (one per packed sequence or decode row): a sequence starts from its row when `has_state`
  (None or bool (num_seqs,); None = never) says so, else from zero, and its final state
  replaces the row; a slot < 0 or >= num_slots reads and writes nothing (for decode, its
  output row is 0). Rows not addressed stay bitwise unchanged. cu_seqlens is int32 (B == 1).

Besides those: `unavailable() -> str | None` (why it cannot run on this machine, with the
fix where there is one) and `unsupported(q, k, v, cu_seqlens) -> str | None` (why it cannot
serve these tensors, naming the input change that would work where there is one).
"""
from typing import Callable, NamedTuple, Optional


class Backend(NamedTuple):
    name: str
    fwd: Callable
    bwd: Callable
    decode: Callable
    state: Optional[Callable]
    pool_prefill: Optional[Callable]
    pool_decode: Optional[Callable]
    unavailable: Callable
    unsupported: Callable
