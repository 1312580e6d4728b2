"""Shared pieces of the Triton backend: lazy kernel compilation (GPU or interpreter),
the segment plan that splits sequences for parallelism, and the varlen segment table.

Sequences are cut into *segments* of `seg` tokens (a multiple of the block size BT).
Segment g of the flattened list belongs to sequence `i` and is its `j`-th segment; for
fixed-length batches g = b * NS + j, for `cu_seqlens` a small table built on the device
(no host synchronisation) maps g -> (i, j), with -1 marking unused tail entries.
"""
import os

import torch
import triton
import triton.language as tl

#: Block (chunk) size of the kernels: tokens per tensor-core tile.
BT = 64

#: Launch tunables (a benchmark may override them): warps, pipeline stages and block size
#: (a power of two from 16 to BT, so that it divides every segment) per kernel, the block size
#: of float32 inputs (block_tokens), and a fixed segment length (None: planned from the shape
#: and the multiprocessor count).
CONFIG = {
    "out_warps": 8, "out_stages": 3, "bt_out": BT,
    "state_warps": 8, "state_stages": 3, "bt_state": BT,
    "bwd_warps": 8, "bwd_stages": 2, "bt_bwd": BT,
    "bt_fp32": 16,
    "seg": None,
}


def block_tokens(kernel: str, dtype) -> int:
    """The block size of kernel `kernel` ("out", "state" or "bwd") for inputs of `dtype`.
    float32 inputs take exact float32 products (dot_prec), which Triton builds as FMA loops
    over the whole tile: at D = 128 the forward's and backward's kernels took ~3 minutes to
    compile for sm_90 with 64-token blocks and ~13 s with 16, so float32 uses at most
    CONFIG["bt_fp32"]."""
    bt = CONFIG["bt_" + kernel]
    return min(bt, CONFIG["bt_fp32"]) if dtype == torch.float32 else bt


def interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def horizon_log2(moment: bool) -> int:
    """Pass 1 skips the tokens past each head's decay horizon, whose weight in a segment's
    state is below 2^-190 (with moments 2^-222: a moment weights a token up to 2^31 times
    more), so they add less than float32's smallest normal number to any state entry below
    2^64 (csrc/la_state_sm90.cuh, the CUDA kernel's twin): that exponent, or 0 (every
    token) with LIGHTNING_ATTENTION_HORIZON=0 (read at each call, for comparisons)."""
    if os.environ.get("LIGHTNING_ATTENTION_HORIZON", "1") == "0":
        return 0
    return 222 if moment else 190


def interpreter_problem():
    """Why Triton's interpreter cannot run these kernels here, or None. Before Triton 3.8
    it turns a loop bound into an int with int() of the 1-element array that every scalar
    is there, which recent NumPy refuses ("only 0-dimensional arrays can be converted to
    Python scalars"); Triton 3.8 squeezes the array first."""
    try:
        import numpy as np
    except ImportError:  # no interpreter at all: Triton's own error says so at launch
        return None
    if tuple(int(x) for x in triton.__version__.split(".")[:2]) >= (3, 8):
        return None
    try:
        int(np.array([0]))
    except TypeError:
        return (f"Triton {triton.__version__}'s interpreter cannot run these kernels with "
                f"NumPy {np.__version__}, which refuses int() of a 1-element array: upgrade "
                "to triton>=3.8 or install numpy<2.4")
    return None


class LazyKernel:
    """A Triton kernel compiled on first launch, for the GPU or, when TRITON_INTERPRET=1
    at launch time (not import time), for Triton's CPU interpreter."""

    def __init__(self, fn):
        self.fn = fn
        self._jit = {}

    def __getitem__(self, grid):
        mode = interpret()
        k = self._jit.get(mode)
        if k is None:
            if mode:
                from triton.runtime.interpreter import InterpretedFunction
                k = InterpretedFunction(self.fn)
            else:
                k = triton.jit(self.fn)
            self._jit[mode] = k
        return lambda *args, **kw: _launch(k, grid, args, kw)


def _launch(k, grid, args, kw):
    """Launch; when a configuration needs more shared memory or registers than the GPU has
    (large head dims, float32 tiles), fall back to fewer pipeline stages, then fewer warps."""
    from triton.runtime.errors import OutOfResources
    try:
        return k[grid](*args, **kw)
    except OutOfResources:
        if kw.get("num_stages", 3) > 1:
            return _launch(k, grid, args, dict(kw, num_stages=1))
        if kw.get("num_warps", 4) > 4:
            return _launch(k, grid, args, dict(kw, num_warps=4))
        raise


def kernel(fn):
    return LazyKernel(fn)


class _DeviceFunction(triton.runtime.JITFunction):
    """A @triton.jit device function that the kernels call both when compiled and in the
    interpreter (kernel() picks the mode at launch; a plain JITFunction refuses the
    interpreter's Python call)."""

    def __call__(self, *args, **kwargs):
        if interpret():
            from triton.runtime.interpreter import InterpretedFunction
            return InterpretedFunction(self.fn)(*args, **kwargs)
        return super().__call__(*args, **kwargs)


def device_function(fn):
    return _DeviceFunction(fn)


# Row sums for the d slope terms. Library reductions (tl.sum) do not run in an interpreter
# started after triton's import (TRITON_INTERPRET=1 set at launch time, as the tests do), so
# there a sum is a product with ones, and a row's sum is repeated over 16 columns.

@device_function
def row_sums(x, INTERP: tl.constexpr):
    """Row sums of a float32 (R, C) tile as an (R, W) tile of W equal columns: W = 1 when
    compiled, 16 in the interpreter."""
    if INTERP:
        return tl.dot(x, tl.full([x.shape[1], 16], 1.0, tl.float32), input_precision="ieee")
    else:
        return tl.sum(x, axis=1, keep_dims=True)


@device_function
def total(x, R: tl.constexpr, INTERP: tl.constexpr):
    """The sum of a float32 tile, in a tile that broadcasts against row_sums' (R, W)."""
    if INTERP:
        ones = tl.full([R, x.shape[0]], 1.0, tl.float32)
        return row_sums(tl.dot(ones, x, input_precision="ieee"), INTERP)
    else:
        return tl.sum(row_sums(x, INTERP), axis=0, keep_dims=True)


@device_function
def dot_t(a, b, SPLIT: tl.constexpr, DOT_PREC: tl.constexpr):
    """a^T b for a float32 `a` (a weighted 16-bit tile) rounded to b's dtype as the
    operand. With SPLIT, a goes in as two parts, hi = round(a) and lo = round(a - hi), two
    products: the d slope terms' operands carry decay weights lam^j, and rounding a * lam^j
    to 16 bits moves each token's weight by up to 2^-9 (bfloat16) relative, which the
    terms, small sums of large ones, do not average away (docs/DSLOPE.md)."""
    hi = a.to(b.dtype)
    acc = tl.dot(tl.trans(hi), b, input_precision=DOT_PREC)
    if SPLIT:
        acc += tl.dot(tl.trans((a - hi.to(tl.float32)).to(b.dtype)), b, input_precision=DOT_PREC)
    return acc


@device_function
def store_rows(ptrs, x, mask, INTERP: tl.constexpr):
    """Store row_sums' (R, W) tile x at ptrs (R,) where mask (R,)."""
    if INTERP:
        c = tl.arange(0, 16)
        tl.store(ptrs[:, None] + c[None, :] * 0, x, mask=mask[:, None] & (c[None, :] == 0))
    else:
        tl.store(ptrs[:, None], x, mask=mask[:, None])


def next_pow2(x: int) -> int:
    return triton.next_power_of_2(max(int(x), 1))


def num_sms(device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 8


def dot_prec(dtype) -> str:
    # float32 inputs get exact float32 products (tf32 would cost ~3e-4 relative error).
    return "ieee" if dtype == torch.float32 else None


def plan_segment(n_tokens: int, n_streams: int, device, seg=None) -> int:
    """Segment length (a power of two >= 4*BT) such that n_streams * segments gives a few
    programs per multiprocessor; `n_tokens` is the longest a sequence can be."""
    if seg is not None:
        return max(BT, int(seg) // BT * BT)
    target = 4 * num_sms(device)
    per_stream = max(1, -(-target // max(n_streams, 1)))  # segments wanted per sequence
    seg = next_pow2(-(-max(n_tokens, 1) // per_stream))
    return int(min(max(seg, 4 * BT), 8192))


class SegTable:
    """Where each segment lies. `varlen` tensors are int32 on the device (None otherwise):
    seq_of[g], j_of[g] (G,), bos[i], eos[i], first[i] (num_seqs,)."""

    def __init__(self, N, B, seg, cu_seqlens):
        self.seg = seg
        self.N = N
        if cu_seqlens is None:
            self.varlen = False
            self.nseqs = B
            self.NS = max(1, -(-N // seg))
            self.G = B * self.NS
            self.single = self.NS == 1
            self.seq_of = self.j_of = self.bos = self.eos = self.first = None
        else:
            self.varlen = True
            nseqs = cu_seqlens.numel() - 1
            self.nseqs = nseqs
            self.NS = 1
            # malformed offsets are clamped, and each sequence starts where the previous
            # ended (the running maximum), so no two programs write the same token
            cu = torch.cummax(cu_seqlens.to(torch.int64).clamp(0, N), 0).values
            bos = cu[:-1]
            eos = torch.maximum(cu[1:], bos)
            nseg = ((eos - bos + seg - 1) // seg).clamp_min(1)
            cum = torch.cumsum(nseg, 0)
            self.G = -(-N // seg) + nseqs  # an upper bound read from shapes only
            g = torch.arange(self.G, device=cu.device, dtype=torch.int64)
            seq = torch.searchsorted(cum, g, right=True)
            valid = seq < nseqs
            seqc = seq.clamp_max(max(nseqs - 1, 0))
            first = cum - nseg
            j = g - first[seqc]
            self.seq_of = torch.where(valid, seq, -1).to(torch.int32)
            self.j_of = torch.where(valid, j, 0).to(torch.int32)
            self.bos = bos.to(torch.int32)
            self.eos = eos.to(torch.int32)
            self.first = first.to(torch.int32)
            self.single = seg >= N

    def args(self, device):
        """The four table pointers for a kernel launch (placeholders when not varlen)."""
        if not self.varlen:
            d = torch.empty(1, dtype=torch.int32, device=device)
            return d, d, d, d
        return self.seq_of, self.j_of, self.bos, self.eos
