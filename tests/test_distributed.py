"""Sequence parallelism (lightning_attention.distributed): P processes, each holding a slice of
one sequence, give the output and every gradient of the single-process call.

CPU, gloo, 2 and 4 processes (torch.multiprocessing), unequal slices (one of 1 token, one
empty), the torch backend and (float32, when Triton is installed) the Triton kernels in
Triton's interpreter. Each rank computes the single-process result on the whole sequence itself and
compares its slice; d slope is the sum of the ranks' shares. Tolerances, as max |error|
over the largest magnitude of the reference:
    float64: within 1e-11 of the single-process result (o, dq, dk, dv, d slope);
    float32: against the float64 truth, at most 2x the single-process float32 call's error
             + 1e-6 (FlashAttention's rule, as in tests/utils.py).

On GPUs (NCCL, bf16, whichever backend `auto` picks):
    torchrun --nproc-per-node 2 tests/test_distributed.py
compares against the float64 truth instead: the error of the split call is at most twice the
error of the single-GPU call plus 2^-7 of the largest magnitude (one bf16 ulp of it or more):
the exchanged states come from GEMMs over λ^{N_r-1-t} k_t and c λ^{t+1} q_t rounded to
bf16, and the truth's dq, dk, dv are rounded to bf16 (autograd returns them in the inputs'
dtype), so an output as accurate as the single call's may round the other way: with 4 and 8
processes (gloo, CPU) dq, dk and dv were one ulp off at their largest magnitude, where the
single call matched the rounded truth exactly.
"""
import datetime
import os
import sys
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

# Imported before any process group exists, on purpose: torch._dynamo imported after
# init_process_group (the first op call imports it) keeps the default group alive past
# destroy_process_group. That group is then torn down during interpreter exit with its gloo
# threads still joinable, and the worker dies now and then with "terminate called without an
# active exception" (SIGABRT; pytorch/pytorch#65513 has the mechanism).
import torch._dynamo  # noqa: E402,F401

sys.path.insert(0, os.path.dirname(__file__))
import lightning_attention as la  # noqa: E402
from lightning_attention.distributed import lightning_attn_sp  # noqa: E402
from lightning_attention.layout import is_bnhd  # noqa: E402
from utils import make_inputs, rand_slope, truth  # noqa: E402

try:  # Triton's CPU interpreter runs the kernels here (not every Triton with every NumPy)
    from lightning_attention.kernels.triton_backend._common import interpreter_problem
    _HAS_TRITON = interpreter_problem() is None
except ImportError:
    _HAS_TRITON = False

TOL64 = 1e-11
SLACK32 = 1e-6
SLACK16 = 2.0 ** -7


def _rel_err(x, ref):
    if x.numel() == 0:  # a rank's empty slice
        return 0.0
    return (x.double() - ref.double()).abs().max().item() / max(ref.abs().max().item(), 1e-12)


def _bounds(lengths, rank):
    start = sum(lengths[:rank])
    return start, start + lengths[rank]


def _leaves(*xs):
    return [None if x is None else x.detach().clone().requires_grad_() for x in xs]


def _check_case(rank, world, group, lengths, *, dtype, decay=True, scale=1.0, layout="bhnd",
                B=2, H=3, D=32, E=48, seed=0, slope_scale=1.0, backend=None):
    """One sequence of sum(lengths) tokens split over `group`; checks this rank's slice."""
    torch.manual_seed(seed)
    N = sum(lengths)
    q, k, v = make_inputs(B, H, N, D, E, dtype=dtype, layout=layout)
    slope = rand_slope(H).to(dtype) * slope_scale if decay else None
    do = torch.randn(B, H, N, E).to(dtype)

    full = _leaves(q, k, v, slope)
    o_ref = la.lightning_attn(*full, scale=scale, backend=backend)
    o_ref.backward(do)

    a, b = _bounds(lengths, dist.get_rank(group))
    local = _leaves(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], slope)
    o = lightning_attn_sp(*local, scale=scale, group=group, backend=backend)
    o.backward(do[:, :, a:b])

    tag = f"rank {rank} lengths {lengths} {dtype} {layout} decay={decay}"
    assert o.dtype == dtype and is_bnhd(o) == (layout == "bnhd"), f"{tag}: dtype/layout"
    rows = [("o", o, o_ref)] + [(n, x.grad, r.grad) for n, x, r in zip(("dq", "dk", "dv"),
                                                                           local, full)]
    rows = [(n, x, r[:, :, a:b]) for n, x, r in rows]
    if decay:
        dslope = local[3].grad.clone()
        dist.all_reduce(dslope, group=group)
        rows.append(("dslope", dslope, full[3].grad))
    truth_rows = None
    if dtype != torch.float64:  # the float64 truth of the whole sequence, sliced like rows
        t_o, _, t_g = truth(q, k, v, slope, scale, do=do)
        truth_rows = [t_o[:, :, a:b]] + [g[:, :, a:b] for g in t_g[:3]] + t_g[3:4]
    for i, (name, x, single) in enumerate(rows):
        if not single.numel():
            continue
        if truth_rows is None:
            err = _rel_err(x, single)
            assert err <= TOL64, f"{tag}: {name} differs from one process by {err:.2e}"
        else:
            ref = truth_rows[i]
            err, base = _rel_err(x, ref), _rel_err(single, ref)
            assert err <= 2 * base + SLACK32, \
                f"{tag}: {name} relative error {err:.2e} > 2 x {base:.2e} (one process) + slack"


def _check_module(rank, world):
    """LightningAttention(sequence_parallel_group=...) on (B, N_r, C) slices: its output and
    the weights' gradients (summed over the ranks) are those of the whole sequence."""
    torch.manual_seed(1)
    lengths = [23, 1, 40, 9, 0, 12, 3, 30][:world]
    ref = la.LightningAttention(64, 2, dtype=torch.float64)
    sp = la.LightningAttention(64, 2, dtype=torch.float64, sequence_parallel_group=dist.group.WORLD)
    sp.load_state_dict(ref.state_dict())
    x = torch.randn(2, sum(lengths), 64, dtype=torch.float64)
    y_ref = ref(x)
    y_ref.square().sum().backward()
    a, b = _bounds(lengths, rank)
    y = sp(x[:, a:b])
    y.square().sum().backward()
    assert _rel_err(y, y_ref[:, a:b]) <= 1e-11
    with torch.no_grad():  # inference: the same collective, no graph
        assert _rel_err(sp(x[:, a:b]), y_ref[:, a:b]) <= 1e-11
    for (name, p), p_ref in zip(sp.named_parameters(), ref.parameters()):
        g = p.grad.clone()
        dist.all_reduce(g)
        assert _rel_err(g, p_ref.grad) <= 1e-11, name
    with pytest.raises(ValueError, match="sequence_parallel_group"):
        sp(x[:, a:b], output_state=True)


def _checks(rank, world):
    g = dist.group.WORLD
    uneven = {2: [45, 1], 4: [37, 1, 64, 13], 8: [37, 1, 64, 13, 2, 21, 5, 40]}[world]
    with_empty = {2: [0, 50], 4: [20, 0, 33, 1], 8: [20, 0, 33, 1, 0, 0, 17, 9]}[world]
    _check_case(rank, world, g, uneven, dtype=torch.float64, scale=0.7)
    _check_case(rank, world, g, with_empty, dtype=torch.float64, seed=1)
    _check_case(rank, world, g, uneven[::-1], dtype=torch.float32, layout="bnhd", seed=2)
    _check_case(rank, world, g, uneven, dtype=torch.float32, decay=False, seed=3)
    # strong decay (slopes up to ~8): the distant states must vanish, not overflow
    _check_case(rank, world, g, uneven, dtype=torch.float32, slope_scale=16.0, seed=4)
    _check_module(rank, world)
    if _HAS_TRITON:  # a kernel backend: its initial-state, final-state-gradient and d slope
        os.environ["TRITON_INTERPRET"] = "1"  # terms paths, in Triton's CPU interpreter
        _check_case(rank, world, g, uneven, dtype=torch.float32, seed=6, backend="triton")
    if world == 4:  # two groups of two ranks, each splitting its own sequence
        pairs = [dist.new_group([0, 1]), dist.new_group([2, 3])]
        _check_case(rank, world, pairs[rank // 2], [30 + rank // 2, 17], dtype=torch.float64,
                    seed=5 + rank // 2)


def _worker(rank, world, init_file):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=120))
    try:
        _checks(rank, world)
        dist.barrier()  # nobody tears gloo down while a peer still reads from it
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 4])  # 8 works too (tables above), too slow for CI's 2 cores
def test_sequence_parallel_gloo(world):
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(world, os.path.join(tmp, "init")), nprocs=world, join=True)


def test_not_initialized():
    if dist.is_initialized():
        pytest.skip("a process group is already initialized")
    q, k, v = make_inputs(1, 2, 8, 16, 16)
    with pytest.raises(RuntimeError, match="init_process_group"):
        lightning_attn_sp(q, k, v)


# ------------------------------------------------------------------ GPUs: NCCL, torchrun

def _nccl_main():
    """torchrun --nproc-per-node 2 tests/test_distributed.py: bf16 on the GPUs with NCCL
    (without GPUs: on the CPU with gloo and smaller sizes, to check the script)."""
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    dev = torch.device("cuda" if cuda else "cpu")
    backend = la.api.dispatch.select(None, *(torch.empty(1, 1, 1, 64, device=dev,
                                                         dtype=torch.bfloat16),) * 3).name
    failures = []
    sizes = ((4096, 4, 128), (3000, 2, 64)) if cuda else ((700, 2, 64), (300, 2, 32))
    for N, H, D in sizes:
        torch.manual_seed(0)
        lengths = [N // world + 7 * (i == 0) for i in range(world)]
        lengths[-1] = N - sum(lengths[:-1])
        q, k, v = (x.to(dev) for x in make_inputs(1, H, N, D, D, dtype=torch.bfloat16))
        slope = rand_slope(H).to(dev)
        do = torch.randn(1, H, N, D, device=dev).to(torch.bfloat16)
        ref_o, _, ref_g = truth(q, k, v, slope, do=do)
        full = _leaves(q, k, v, slope)
        o_full = la.lightning_attn(*full)
        o_full.backward(do)
        a, b = _bounds(lengths, rank)
        local = _leaves(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], slope)
        o = lightning_attn_sp(*local)
        o.backward(do[:, :, a:b])
        dslope = local[3].grad.clone()
        dist.all_reduce(dslope)
        rows = [("o", o, o_full[:, :, a:b], ref_o[:, :, a:b])]
        rows += [(n, x.grad, f.grad[:, :, a:b], r[:, :, a:b])
                 for n, x, f, r in zip(("dq", "dk", "dv"), local, full, ref_g)]
        rows.append(("dslope", dslope, full[3].grad, ref_g[3]))
        for name, x, single, ref in rows:
            scale = ref.abs().max().item()
            err = (x.double() - ref).abs().max().item()
            base = (single.double() - ref).abs().max().item()
            ok = err <= 2 * base + SLACK16 * scale
            if rank == 0 or name != "dslope":
                print(f"rank {rank} N={N} H={H} D={D} {name:6s} err {err:.3e} single {base:.3e} "
                      f"max|ref| {scale:.2e} {'ok' if ok else 'FAIL'}", flush=True)
            if not ok:
                failures.append((N, name))
    flag = torch.tensor([len(failures)], device=dev)
    dist.all_reduce(flag)
    if rank == 0:
        print(f"{'NCCL' if cuda else 'gloo'} bf16 sequence-parallel test on {world} "
              f"{'GPUs' if cuda else 'processes'}, backend {backend}: "
              f"{'PASS' if flag.item() == 0 else 'FAIL'}", flush=True)
    dist.destroy_process_group()
    sys.exit(1 if flag.item() else 0)


if __name__ == "__main__":
    _nccl_main()
