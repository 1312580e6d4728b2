"""The executable spec: the math of Lightning Attention-2 written as plainly as possible
(quadratic in N), for tests. Pass float64 tensors for the float64 truth; differentiable."""
import torch


def decay_rate(slope, H, like):
    """slope as a (1, H, 1, 1) tensor in `like`'s dtype (zeros for no decay)."""
    if slope is None:
        return torch.zeros(1, H, 1, 1, dtype=like.dtype, device=like.device)
    return slope.to(like.dtype).view(1, H, 1, 1)


def seq_bounds(cu_seqlens, N):
    """[(start, end)] of each packed sequence, clamped into [0, N] and non-decreasing."""
    bounds, prev = [], 0
    offsets = cu_seqlens.tolist()
    for a, b in zip(offsets[:-1], offsets[1:]):
        a = min(max(a, prev), N)
        b = min(max(b, a), N)
        bounds.append((a, b))
        prev = b
    return bounds


def attention_ref(q, k, v, slope=None, scale=1.0, initial_state=None, cu_seqlens=None):
    """o_t = c Σ_{s≤t} λ^{t-s} (q_t·k_s) v_s + c λ^{t+1} q_t S_init, and the final state.

    q, k: (B, H, N, D); v: (B, H, N, E); slope: (H,) or None; initial_state: (B, H, D, E)
    (or (num_seqs, H, D, E) with cu_seqlens). Computes in the inputs' dtype.
    Returns (o (B, H, N, E), final_state (B or num_seqs, H, D, E)).
    """
    if cu_seqlens is not None:
        outs, states = [], []
        for i, (a, b) in enumerate(seq_bounds(cu_seqlens, q.shape[2])):
            s0 = None if initial_state is None else initial_state[i:i + 1]
            o, s = attention_ref(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], slope, scale, s0)
            outs.append(o)
            states.append(s)
        return torch.cat(outs, dim=2), torch.cat(states, dim=0)
    B, H, N, D = q.shape
    E = v.shape[-1]
    s = decay_rate(slope, H, q)
    t = torch.arange(N, device=q.device, dtype=q.dtype)
    diff = t[:, None] - t[None, :]
    causal = diff >= 0
    decay = torch.exp(-s * diff.clamp(min=0)) * causal  # (1, H, N, N): λ^{t-s}, 0 above the diagonal
    o = ((q @ k.transpose(-1, -2)) * decay) @ v
    state = torch.zeros(B, H, D, E, dtype=q.dtype, device=q.device)
    if initial_state is not None:
        s0 = initial_state.to(q.dtype)
        o = o + torch.exp(-s * (t + 1)[:, None]) * (q @ s0)
        state = torch.exp(-s * N) * s0
    k_decayed = k * torch.exp(-s * (N - 1 - t)[:, None])
    state = state + k_decayed.transpose(-1, -2) @ v
    return scale * o, state
