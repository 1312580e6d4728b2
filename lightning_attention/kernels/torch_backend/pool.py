"""States in a pool, addressed by slot (serving): the block form's forward and decode step
on the rows the slots name. Selecting the valid slots reads them on the host (a device
synchronisation): the GPU kernels (Triton) read the slots on the device instead."""
import torch

from . import blocks


def _addressed(slots, num_slots):
    """(positions of the slots that address a row, those rows as int64)."""
    pos = ((slots >= 0) & (slots < num_slots)).nonzero().squeeze(1)
    return pos, slots[pos].long()


def pool_prefill(q, k, v, slope, scale, cu_seqlens, state_pool, slots, has_state):
    pos, rows = _addressed(slots, state_pool.shape[0])
    init = state_pool.new_zeros(slots.shape[0], *state_pool.shape[1:])
    if has_state is not None:
        keep = has_state[pos]
        init[pos[keep]] = state_pool[rows[keep]]
    o, final, _ = blocks.fwd(q, k, v, slope, scale, init, cu_seqlens, True)
    state_pool[rows] = final[pos]
    return o


def pool_decode(q, k, v, state_pool, slots, slope, scale):
    pos, rows = _addressed(slots, state_pool.shape[0])
    o = q.new_zeros(*q.shape[:2], v.shape[-1])
    state = state_pool[rows]
    o[pos] = blocks.decode(q[pos], k[pos], v[pos], state, slope, scale)
    state_pool[rows] = state
    return o
