"""lightning_attention.serving: prefill and decode with states in a pool, addressed by slot,
against the float64 truth of each sequence on its own (tests/utils.py: truth). Unused pool
rows hold NaN: a kernel that reads one spoils an output; rows no slot addresses must come
back bitwise unchanged."""
import functools

import pytest
import torch

import utils
from lightning_attention import config, dispatch, serving
from lightning_attention.kernels import cuda_backend

H, D, E = 2, 16, 32
NUM_SLOTS = 9


def bits(x):
    """x's bit pattern, so that NaN rows compare equal to themselves."""
    return x.view(torch.int32)


def nan_pool(device, d=D, e=E):
    return torch.full((NUM_SLOTS, H, d, e), float("nan"), device=device)


@pytest.fixture(params=["torch", "triton"])
def backend(request):
    """The backend under test: torch, or Triton in its CPU interpreter."""
    if request.param == "triton":
        request.getfixturevalue("interp")
    return request.param


def _prefill_case(backend, device, dtype, has_state, cu, slots, layout="bhnd",
                  slot_dtype=torch.int32, d=D, e=E):
    """One prefill call; the pool's rows hold NaN except those read (has_state)."""
    N = cu[-1]
    q, k, v = utils.make_inputs(1, H, N, d, e, dtype=dtype, device=device, layout=layout)
    slope = utils.rand_slope(H, device)
    n = len(cu) - 1
    pool = nan_pool(device, d, e)
    s0 = torch.zeros(n, H, d, e, device=device)
    for i, s in enumerate(slots):
        if s >= 0 and has_state is not None and has_state[i]:
            pool[s] = s0[i] = utils.rand_state(1, H, d, e, device)[0]
    before = pool.clone()
    slots_t = torch.tensor(slots, dtype=slot_dtype, device=device)
    has = None if has_state is None else torch.tensor(has_state, device=device)
    cu_t = torch.tensor(cu, dtype=torch.int32, device=device)
    with utils.poisoned():
        o = serving.prefill(q, k, v, slope, cu_t, pool, slots_t, has_state=has, scale=0.7,
                            backend=backend)
    ref_o, ref_final = utils.truth(q, k, v, slope, 0.7, s0, cu)
    base_o, base_final = utils.baseline(q, k, v, slope, 0.7, s0, cu)
    utils.assert_close(o, ref_o, base_o, "o")
    for i, s in enumerate(slots):
        if s >= 0:
            utils.assert_close(pool[s], ref_final[i], base_final[i], f"pool[{s}] (sequence {i})",
                               utils.STATE_FACTOR)
    untouched = [r for r in range(NUM_SLOTS) if r not in slots]
    assert torch.equal(bits(pool[untouched]), bits(before[untouched])), "rows not addressed"


#: utils.varlen(50): an empty sequence first and last, one token, two longer ones, one token
CU = utils.varlen(50)
SLOTS = [7, 2, -1, 0, 5, 3]


@pytest.mark.parametrize("has_state", [None, [False] * 6, [True] * 6,
                                       [True, False, True, True, False, True]],
                         ids=["none", "all-false", "all-true", "mixed"])
def test_prefill(backend, has_state):
    _prefill_case(backend, "cpu", torch.float32, has_state, CU, SLOTS)


def test_prefill_layouts_and_int64_slots(backend):
    """(B, N, H, D) memory in and out, and int64 slots."""
    _prefill_case(backend, "cpu", torch.float32, [True, False, True, False, True, True], CU,
                  SLOTS, layout="bnhd", slot_dtype=torch.int64)


def test_prefill_triton_segments(interp, descending, monkeypatch):
    """Sequences of several Triton segments (64 tokens here), with the grid in descending
    order: the output pass of a sequence's last segment writes the pool row that its first
    segment starts from, so the first may never read the row itself."""
    from lightning_attention.kernels.triton_backend import _common
    monkeypatch.setitem(_common.CONFIG, "seg", 64)
    _prefill_case("triton", "cpu", torch.float32, [True, False, True], [0, 150, 151, 300],
                  [6, 1, 2])


def test_prefill_float16_chunked(backend):
    """Two chunks of the same prompts: the second starts from the states the first wrote."""
    N1, N2 = 40, 30
    q, k, v = utils.make_inputs(1, H, N1 + N2, D, E, dtype=torch.float16)
    slope = utils.rand_slope(H)
    pool = nan_pool("cpu")
    slots = torch.tensor([4, 1], dtype=torch.int32)
    halves = ([0, 25, N1], [0, 15, N2])  # sequence 0: 25 + 15 tokens, sequence 1: 15 + 15
    o1 = serving.prefill(q[:, :, :N1], k[:, :, :N1], v[:, :, :N1], slope,
                         torch.tensor(halves[0]), pool, slots, backend=backend)
    o2 = serving.prefill(q[:, :, N1:], k[:, :, N1:], v[:, :, N1:], slope,
                         torch.tensor(halves[1]), pool, slots,
                         has_state=torch.tensor([True, True]), backend=backend)
    order = [*range(0, 25), *range(40, 55), *range(25, 40), *range(55, 70)]  # by sequence
    cu = [0, 40, 70]
    x = [t[:, :, order] for t in (q, k, v)]
    ref_o, ref_final = utils.truth(*x, slope, 1.0, None, cu)
    base_o, base_final = utils.baseline(*x, slope, 1.0, None, cu)
    o = torch.cat([o1, o2], 2)[:, :, order]
    utils.assert_close(o, ref_o, base_o, "o")
    utils.assert_close(pool[slots.long()], ref_final, base_final, "final states",
                       utils.STATE_FACTOR)


def _decode_steps(backend, device, dtype=torch.float32, d=D, e=E):
    """Token after token from pool rows: each output and the final rows equal the truth of
    the whole sequence; padding rows (negative slots) give 0; other rows stay unchanged."""
    N = 6
    slots = [3, -1, 0, 6, -2]
    B = len(slots)
    q, k, v = utils.make_inputs(B, H, N, d, e, dtype=dtype, device=device)
    slope = utils.rand_slope(H, device)
    pool = nan_pool(device, d, e)
    s0 = utils.rand_state(B, H, d, e, device)
    for b, s in enumerate(slots):
        if s >= 0:
            pool[s] = s0[b]
    before = pool.clone()
    ref_o, ref_final = utils.truth(q, k, v, slope, 0.5, s0)
    base_o, base_final = utils.baseline(q, k, v, slope, 0.5, s0)
    slots_t = torch.tensor(slots, dtype=torch.int32, device=device)
    live = [b for b, s in enumerate(slots) if s >= 0]
    for t in range(N):
        with utils.poisoned():
            o = serving.decode(q[:, :, t], k[:, :, t], v[:, :, t], pool, slots_t, slope,
                               scale=0.5, backend=backend)
        utils.assert_close(o[live], ref_o[live, :, t], base_o[live, :, t], f"o (step {t})")
        assert torch.equal(o[[1, 4]], torch.zeros_like(o[[1, 4]])), "padding rows"
    rows = [slots[b] for b in live]
    utils.assert_close(pool[rows], ref_final[live], base_final[live], "final states",
                       utils.STATE_FACTOR)
    untouched = [r for r in range(NUM_SLOTS) if r not in slots]
    assert torch.equal(bits(pool[untouched]), bits(before[untouched])), "rows not addressed"


def test_decode_steps(backend):
    _decode_steps(backend, "cpu")


def test_decode_forward_only(backend):
    """Inputs that require grad (a learnable slope too) give an output without a graph."""
    q, k, v = (torch.randn(2, H, X, requires_grad=True) for X in (D, D, E))
    slope = torch.rand(H, requires_grad=True)
    pool = torch.randn(NUM_SLOTS, H, D, E)
    o = serving.decode(q, k, v, pool, torch.tensor([3, 1]), slope, backend=backend)
    assert not o.requires_grad and o.grad_fn is None


def test_decode_float16(backend):
    B = 3
    q, k, v = (torch.randn(B, H, X).half() for X in (D, D, E))
    pool = torch.randn(NUM_SLOTS, H, D, E) * 0.1
    slots = torch.tensor([8, -1, 2], dtype=torch.int32)
    s0 = pool[[8, 2]].double()
    o = serving.decode(q, k, v, pool, slots, None, backend=backend)
    s1 = s0 + k[[0, 2]].double().unsqueeze(-1) * v[[0, 2]].double().unsqueeze(-2)
    ro = (q[[0, 2]].double().unsqueeze(-2) @ s1).squeeze(-2)
    assert o.dtype == torch.float16
    torch.testing.assert_close(o[[0, 2]].double(), ro, rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(pool[[8, 2]].double(), s1, rtol=1e-6, atol=1e-6)
    assert torch.equal(o[1], torch.zeros_like(o[1]))


def test_empty_prefill_writes_starting_states():
    """T = 0: every sequence is empty; its final state is its start (zero without a state)."""
    pool = torch.randn(4, H, D, E)
    before = pool.clone()
    q, k = torch.randn(1, H, 0, D), torch.randn(1, H, 0, D)
    v = torch.randn(1, H, 0, E)
    o = serving.prefill(q, k, v, None, torch.tensor([0, 0, 0]), pool,
                        torch.tensor([1, 3], dtype=torch.int32),
                        has_state=torch.tensor([True, False]))
    assert o.shape == (1, H, 0, E)
    assert torch.equal(pool[[0, 1, 2]], before[[0, 1, 2]]) and not pool[3].any()


def _decode_args(**kw):
    args = dict(q=torch.randn(3, H, D), k=torch.randn(3, H, D), v=torch.randn(3, H, E),
                state_pool=torch.zeros(5, H, D, E), slots=torch.tensor([0, -1, 4], dtype=torch.int32),
                slope=None)
    args.update(kw)
    return args


@pytest.mark.parametrize("kw,exc,match", [
    (dict(slots=torch.tensor([0, 5, 1], dtype=torch.int32)), ValueError, "slots must be < num_slots = 5"),
    (dict(slots=torch.tensor([2, -1, 2], dtype=torch.int32)), ValueError, "must not repeat"),
    (dict(slots=torch.tensor([0.0, 1.0, 2.0])), TypeError, "slots must be int32 or int64"),
    (dict(slots=torch.tensor([0, 1], dtype=torch.int32)), ValueError, r"slots must have shape \(3,\)"),
    (dict(state_pool=torch.zeros(5, H, D, E, dtype=torch.float16)), TypeError, "state_pool .* must be torch.float32"),
    (dict(state_pool=torch.zeros(5, H, E, D)), ValueError, "state_pool .* must have shape"),
    (dict(state_pool=torch.zeros(H, D, E)), ValueError, "state_pool must have rank 4"),
    (dict(state_pool=torch.zeros(5, H, D, 2 * E)[..., :E]), ValueError, "state_pool must be contiguous"),
    (dict(q=torch.randn(3, H, 2 * D)), ValueError, "serving.decode: k must have the same D as q"),
    (dict(slots=torch.zeros(3, dtype=torch.int32, device="meta")), ValueError,
     "slots must be on q's device cpu"),
    (dict(state_pool=torch.zeros(5, H, D, E, device="meta")), ValueError,
     "state_pool .* must be on q's device cpu"),
], ids=["out-of-range", "duplicate", "dtype", "shape", "pool-dtype", "pool-shape", "pool-rank",
        "pool-strides", "qk-dims", "slots-device", "pool-device"])
def test_decode_rejects(kw, exc, match):
    with pytest.raises(exc, match=match):
        serving.decode(**_decode_args(**kw))


def _prefill_args(**kw):
    args = dict(q=torch.randn(1, H, 10, D), k=torch.randn(1, H, 10, D), v=torch.randn(1, H, 10, E),
                slope=None, cu_seqlens=torch.tensor([0, 4, 10]), state_pool=torch.zeros(3, H, D, E),
                slots=torch.tensor([2, 0], dtype=torch.int32))
    args.update(kw)
    return args


@pytest.mark.parametrize("kw,exc,match", [
    (dict(slots=torch.tensor([3, 0], dtype=torch.int32)), ValueError, "slots must be < num_slots = 3"),
    (dict(slots=torch.tensor([1, 1], dtype=torch.int32)), ValueError, "must not repeat"),
    (dict(has_state=torch.tensor([1, 0])), TypeError, "has_state must be bool"),
    (dict(has_state=torch.tensor([True])), ValueError, r"has_state must have shape \(2,\)"),
    (dict(cu_seqlens=None), TypeError, "serving.prefill: cu_seqlens must be a tensor"),
    (dict(cu_seqlens=torch.tensor([0, 4, 9])), ValueError, "cu_seqlens must start at 0"),
    (dict(slope=-torch.ones(H)), ValueError, "slope must be finite and >= 0"),
], ids=["out-of-range", "duplicate", "has-state-dtype", "has-state-shape", "no-cu-seqlens",
        "cu-seqlens-values", "slope-values"])
def test_prefill_rejects(kw, exc, match):
    with pytest.raises(exc, match=match):
        serving.prefill(**_prefill_args(**kw))


def test_cuda_serving_switch():
    """The CUDA pool kernels serve unless LIGHTNING_ATTENTION_CUDA_SERVING=0 (with the
    extension); otherwise the dispatcher takes the next backend's."""
    cuda = dispatch.BACKENDS["cuda"]
    on = cuda_backend.SERVING and cuda_backend._C is not None
    assert (cuda.pool_prefill is not None, cuda.pool_decode is not None) == (on, on)
    if not on:
        q = torch.randn(1, H, 4, D)
        b = dispatch.providing("pool_decode", cuda, q, q, torch.randn(1, H, 4, E))
        assert b.pool_decode is not None and b.name != "cuda"


@pytest.mark.parametrize("backend_name", ["torch", "triton"])
def test_opcheck(backend_name, request):
    """The custom ops declare their in-place pool writes and have faithful fake kernels."""
    from lightning_attention import ops
    if backend_name == "triton":
        request.getfixturevalue("interp")
    q, k, v = utils.make_inputs(1, H, 30, D, E)
    pool, slope = torch.randn(NUM_SLOTS, H, D, E), utils.rand_slope(H)
    slots = torch.tensor([5, -1, 2], dtype=torch.int32)
    cu = torch.tensor([0, 10, 12, 30], dtype=torch.int32)
    torch.library.opcheck(ops.pool_prefill, (q, k, v, slope, cu, pool, slots,
                                             torch.tensor([True, False, False]), 0.5, backend_name))
    torch.library.opcheck(ops.pool_decode, (q[0, :, :3].transpose(0, 1).contiguous(),
                                            k[0, :, :3].transpose(0, 1).contiguous(),
                                            v[0, :, :3].transpose(0, 1).contiguous(), pool, slots,
                                            slope, 0.5, backend_name))


def test_decode_compiles_fullgraph():
    """One graph node per step for torch.compile (value checks are skipped while tracing)."""
    q, k, v = (torch.randn(3, H, X) for X in (D, D, E))
    slope = utils.rand_slope(H)
    slots = torch.tensor([4, -1, 0], dtype=torch.int32)
    pool = torch.randn(NUM_SLOTS, H, D, E)
    want_pool = pool.clone()
    want = serving.decode(q, k, v, want_pool, slots, slope)
    step = torch.compile(lambda *a: serving.decode(*a), fullgraph=True, backend="aot_eager")
    got = step(q, k, v, pool, slots, slope)
    torch.testing.assert_close(got, want)
    assert torch.equal(pool, want_pool)


# --------------------------------------------------------------------------------- GPU

cuda_built = pytest.mark.skipif(cuda_backend._C is None, reason="the CUDA extension is not built")
CUDA_DTYPES = list(config.CUDA_DTYPES)
CUDA_HEAD_DIMS = list(config.CUDA_HEAD_DIMS)


@pytest.fixture
def cuda_pool(monkeypatch):
    """The CUDA pool kernels serve serving.prefill/decode, whatever
    LIGHTNING_ATTENTION_CUDA_SERVING says; calling the fixture's value with n forces the
    prefill's segment length (64: several segments per sequence, pass 1 and the scan;
    448: segments of 7 blocks, pass 1 in two parts on sm_90a; 2^20: one)."""
    def install(seg_len=None):
        pool = dict(cuda_backend.POOL)
        if seg_len is not None:
            pool["pool_prefill"] = functools.partial(pool["pool_prefill"], seg_len=seg_len)
        monkeypatch.setitem(dispatch.BACKENDS, "cuda", cuda_backend.BACKEND._replace(**pool))
    install()
    return install


@utils.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_prefill(dtype):
    """Auto dispatch on a GPU (D != E: not the CUDA kernels), several segments per
    sequence."""
    cu = [0, 0, 1, 3000, 3001, 9000, 9000]
    _prefill_case(None, "cuda", dtype, [True, False, True, True, False, True], cu, SLOTS)
    _prefill_case(None, "cuda", dtype, None, cu, SLOTS, layout="bnhd")


#: empty sequences first and last, one token, sequences of many 64-token segments
CUDA_CU = [0, 0, 1, 700, 701, 2000, 2000]


@utils.gpu
@cuda_built
@pytest.mark.parametrize("seg_len", [64, 448, 2 ** 20, None],
                         ids=["segments", "long-segments", "one-segment", "planned"])
@pytest.mark.parametrize("hd", CUDA_HEAD_DIMS)
@pytest.mark.parametrize("dtype", CUDA_DTYPES, ids=str)
@pytest.mark.parametrize("has_state", [None, [True] * 6, [True, False, True, True, False, True]],
                         ids=["none", "all-true", "mixed"])
def test_cuda_prefill(cuda_pool, has_state, dtype, hd, seg_len):
    """The CUDA kernels (sm_90a on Hopper, mma.sync elsewhere) from and into pool rows, NaN
    in every row not read, against the float64 truth; a sequence's first segment never reads
    the row its last one writes."""
    cuda_pool(seg_len)
    _prefill_case("cuda", "cuda", dtype, has_state, CUDA_CU, SLOTS, d=hd, e=hd)


@utils.gpu
@cuda_built
def test_cuda_prefill_layouts_and_int64_slots(cuda_pool):
    _prefill_case("cuda", "cuda", torch.bfloat16, [True, False, True, False, True, True],
                  CUDA_CU, SLOTS, layout="bnhd", slot_dtype=torch.int64, d=64, e=64)


@utils.gpu
@cuda_built
@pytest.mark.parametrize("seg_len", [64, 448, 2 ** 20], ids=["segments", "long-segments", "one-segment"])
def test_cuda_prefill_equals_the_plain_varlen_call(cuda_pool, seg_len):
    """The pooled call is the varlen call with the addressed rows as initial states (zero
    where has_state is False) and its final states written back: bitwise, same kernels."""
    cuda_pool(seg_len)
    hd, cu = 128, torch.tensor(CUDA_CU, dtype=torch.int32, device="cuda")
    q, k, v = utils.make_inputs(1, H, CUDA_CU[-1], hd, hd, dtype=torch.bfloat16, device="cuda")
    slope = utils.rand_slope(H, "cuda")
    pool = torch.randn(NUM_SLOTS, H, hd, hd, device="cuda")
    slots = torch.tensor(SLOTS, dtype=torch.int32, device="cuda")
    has = torch.tensor([True, False, True, True, False, True], device="cuda")
    rows = slots.clamp(min=0).long()
    init = torch.where(has[:, None, None, None] & (slots >= 0)[:, None, None, None],
                       pool[rows], torch.zeros_like(pool[rows]))
    want_o, want_final, _ = torch.ops.lightning_attention_C.fwd(
        q, k, v, slope, 0.7, init, cu, True, seg_len=seg_len)
    want_pool = pool.clone()
    want_pool[rows[slots >= 0]] = want_final[slots >= 0]
    o = serving.prefill(q, k, v, slope, cu, pool, slots, has_state=has, scale=0.7,
                        backend="cuda")
    assert torch.equal(o, want_o) and torch.equal(bits(pool), bits(want_pool))


@utils.gpu
def test_gpu_decode_steps():
    _decode_steps(None, "cuda")


@utils.gpu
@cuda_built
@pytest.mark.parametrize("hd", CUDA_HEAD_DIMS)
@pytest.mark.parametrize("dtype", CUDA_DTYPES, ids=str)
def test_cuda_decode_steps(cuda_pool, dtype, hd):
    _decode_steps("cuda", "cuda", dtype, hd, hd)


@utils.gpu
@cuda_built
@pytest.mark.parametrize("B", [1, 300])
def test_cuda_decode_many_rows(cuda_pool, B):
    """One step for B rows in random order from a larger pool (several CTAs per (b, h)
    and many per SM), every third a padding row, against the float64 step."""
    hd, num_slots = 128, 2 * B + 3
    q, k, v = (torch.randn(B, H, hd, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    slope = utils.rand_slope(H, "cuda")
    slots = torch.randperm(num_slots, device="cuda")[:B].int()
    slots[1::3] = -1
    pool = torch.randn(num_slots, H, hd, hd, device="cuda")
    before = pool.clone()
    live = slots >= 0
    rows = slots[live].long()
    lam = torch.exp(-slope.double())[:, None, None]
    s1 = lam * before[rows].double() + k[live].double()[..., None] * v[live].double()[..., None, :]
    ro = 0.5 * (q[live].double()[..., None, :] @ s1).squeeze(-2)
    with utils.poisoned():
        o = serving.decode(q, k, v, pool, slots, slope, scale=0.5, backend="cuda")
    torch.testing.assert_close(pool[rows].double(), s1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(o[live].double(), ro, rtol=1e-2, atol=1e-2)
    assert not o[~live].any(), "padding rows"
    untouched = torch.ones(num_slots, dtype=torch.bool, device="cuda")
    untouched[rows] = False
    assert torch.equal(bits(pool[untouched]), bits(before[untouched])), "rows not addressed"


@utils.gpu
@cuda_built
@pytest.mark.parametrize("B", [3, 80])
@pytest.mark.parametrize("d,e", [(40, 52), (200, 132), (256, 256)])
def test_cuda_pool_decode_op_odd_shapes(d, e, B):
    """The C++ op takes any D, E <= 256 with E % 4 == 0 (the state streams as float4 rows):
    rows that do not fill a warp, E split over CTAs (few rows: B = 3 at E = 256; E = 52 and
    132 do not split in halves) and one CTA walking D in several passes (B·H = 160 CTAs fill
    an H200's SMs)."""
    num_slots = 2 * B + 3
    q, k, v = (torch.randn(B, H, x, device="cuda") for x in (d, d, e))
    slope = utils.rand_slope(H, "cuda")
    pool = torch.randn(num_slots, H, d, e, device="cuda")
    before = pool.clone()
    slots = torch.randperm(num_slots, device="cuda")[:B].int()
    slots[1::3] = -1
    live = slots >= 0
    rows = slots[live].long()
    with utils.poisoned():
        o = torch.ops.lightning_attention_C.pool_decode(q, k, v, pool, slots, slope, 0.5)
    lam = torch.exp(-slope.double())[:, None, None]
    s1 = lam * before[rows].double() + k[live].double()[..., None] * v[live].double()[..., None, :]
    ro = 0.5 * (q[live].double()[..., None, :] @ s1).squeeze(-2)
    torch.testing.assert_close(pool[rows].double(), s1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(o[live].double(), ro, rtol=1e-4, atol=1e-4)
    assert not o[~live].any(), "padding rows"
    untouched = torch.ones(num_slots, dtype=torch.bool, device="cuda")
    untouched[rows] = False
    assert torch.equal(pool[untouched], before[untouched]), "rows not addressed"


@utils.gpu
@pytest.mark.parametrize("backend", [None, "cuda"], ids=["auto", "cuda"])
def test_gpu_decode_in_a_cuda_graph(monkeypatch, request, backend):
    """Debug value checks on: still no host synchronisation while capturing; replaying the
    graph gives the eager step's outputs and pool."""
    d = e = D
    if backend == "cuda":
        if cuda_backend._C is None:
            pytest.skip("the CUDA extension is not built")
        request.getfixturevalue("cuda_pool")
        d = e = 64
    monkeypatch.setenv("LIGHTNING_ATTENTION_DEBUG", "1")
    B = 4
    q, k, v = (torch.randn(B, H, X, device="cuda", dtype=torch.bfloat16) for X in (d, d, e))
    slope = utils.rand_slope(H, "cuda")
    slots = torch.tensor([7, -1, 0, 3], dtype=torch.int32, device="cuda")
    pool = torch.randn(NUM_SLOTS, H, d, e, device="cuda")
    start = pool.clone()
    want = serving.decode(q, k, v, pool, slots, slope, backend=backend)  # also warms up
    want_pool = pool.clone()
    pool.copy_(start)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        o = serving.decode(q, k, v, pool, slots, slope, backend=backend)
    pool.copy_(start)
    graph.replay()
    assert torch.equal(o, want) and torch.equal(pool, want_pool)


@utils.gpu
@cuda_built
def test_cuda_prefill_in_a_cuda_graph(cuda_pool, monkeypatch):
    """The pooled prefill (with its varlen plan and segment scan) captured and replayed."""
    monkeypatch.setenv("LIGHTNING_ATTENTION_DEBUG", "1")
    cuda_pool(64)
    hd, cu = 64, torch.tensor(CUDA_CU, dtype=torch.int32, device="cuda")
    q, k, v = utils.make_inputs(1, H, CUDA_CU[-1], hd, hd, dtype=torch.bfloat16, device="cuda")
    slope = utils.rand_slope(H, "cuda")
    slots = torch.tensor(SLOTS, dtype=torch.int32, device="cuda")
    has = torch.tensor([True, False, True, True, False, True], device="cuda")
    pool = torch.randn(NUM_SLOTS, H, hd, hd, device="cuda")
    start = pool.clone()

    def step():
        return serving.prefill(q, k, v, slope, cu, pool, slots, has_state=has, backend="cuda")
    want = step()
    want_pool = pool.clone()
    pool.copy_(start)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        o = step()
    pool.copy_(start)
    graph.replay()
    assert torch.equal(o, want) and torch.equal(pool, want_pool)


@utils.gpu
@cuda_built
def test_cuda_opcheck():
    """The C++ pool ops declare their in-place pool writes and have faithful fakes."""
    ops = torch.ops.lightning_attention_C
    hd = 64
    q, k, v = utils.make_inputs(1, H, 130, hd, hd, dtype=torch.bfloat16, device="cuda")
    pool, slope = torch.randn(NUM_SLOTS, H, hd, hd, device="cuda"), utils.rand_slope(H, "cuda")
    slots = torch.tensor([5, -1, 2], dtype=torch.int32, device="cuda")
    cu = torch.tensor([0, 10, 12, 130], dtype=torch.int32, device="cuda")
    has = torch.tensor([True, False, False], device="cuda")
    torch.library.opcheck(ops.pool_prefill, (q, k, v, slope, 0.5, cu, pool, slots, has))
    x = [t[0, :, :3].transpose(0, 1).contiguous() for t in (q, k, v)]
    torch.library.opcheck(ops.pool_decode, (*x, pool, slots, slope, 0.5))


@utils.gpu
@pytest.mark.parametrize("backend", [None, "cuda"], ids=["auto", "cuda"])
def test_gpu_slot_checks_only_with_debug(monkeypatch, request, backend):
    args = _decode_args(slots=torch.tensor([0, 5, 1], dtype=torch.int32))
    if backend == "cuda":
        if cuda_backend._C is None:
            pytest.skip("the CUDA extension is not built")
        request.getfixturevalue("cuda_pool")
        args.update({n: torch.randn(3, H, 64, dtype=torch.bfloat16) for n in "qkv"},
                    state_pool=torch.zeros(5, H, 64, 64))
    args = {name: x.cuda() if isinstance(x, torch.Tensor) else x for name, x in args.items()}
    monkeypatch.setenv("LIGHTNING_ATTENTION_DEBUG", "1")
    with pytest.raises(ValueError, match="slots must be < num_slots = 5"):
        serving.decode(**args, backend=backend)
    monkeypatch.delenv("LIGHTNING_ATTENTION_DEBUG")
    before = args["state_pool"].clone()
    o = serving.decode(**args, backend=backend)  # the out-of-range slot is a padding row
    assert not o[1].any() and torch.equal(args["state_pool"][2:], before[2:])
