"""Fused KV-sharded decode: partial attention pushed straight into the peers' memory,
with a per-tile ready flag, and a combine that waits on the flags.

The `kv_sharded` layout splits each sequence's KV cache along the sequence over a
group of GPUs. Every rank attends its query over its own shard, which gives a
normalized partial output and its log-sum-exp (LSE); the full result is the LSE
merge of the parts (`twinfer.kernels.combine`). The plain way gathers the parts with
a collective (NCCL all-gather) and then merges them. Here, as in Iris's
``fd_layer_iris_fused_full`` (AMD, "Distributed flash decode", ROCm/iris
examples/10_flash_decode), the decode kernel itself stores every (split, batch,
KV-head) tile of its partial output into the receive buffer of *every* rank, then
raises that tile's flag in every rank's flag array with a release atomic at system
scope; the combine kernel spins on each tile's flag with an acquire atomic and
merges the tiles as they arrive. No collective, no host synchronization, no extra
copy: a rank's split partials are merged once, together with the peers'.

These kernels know nothing of torch.distributed or MPI. A peer's buffers are given
as raw device addresses (an int64 tensor ``[world]`` per buffer) that the caller
obtained, e.g. from PyTorch symmetric memory (`twinfer.exec.kvshard_fused`). Under
Triton's interpreter the "peers" can be ordinary tensors of one process, which is how
the CPU tests run the same code path.

Flags hold an *epoch* (the caller's call counter, 1, 2, ...) rather than 1: a flag
never needs resetting, and a waiter accepts any value >= its epoch. Receive buffers
are double-buffered by epoch parity. Why that is race-free without a barrier: a rank
pushes round k+2 into parity slot k%2 only after its combine of round k+1 saw every
peer's round-k+1 flag, and a peer pushes round k+1 only after finishing its own
combine of round k, the last reader of slot k%2.

Receive buffers on every rank (identical shapes; ``S`` splits per rank):
    out_parts fp32  [2, world, S, batch, q_heads, head_dim]
    lse_parts fp32  [2, world, S, batch, q_heads]
    flags     int32 [world, S, batch, kv_heads]   (zero before the first round)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from twinfer.kernels.backend import interpreting, launchable, sm_count
from twinfer.kernels.decode import choose_num_splits, normalized_partial, online_softmax_step

LOG2E = 1.4426950408889634


@triton.jit
def _attend_push_kernel(
    q_ptr, k_ptr, v_ptr, seq_lens_ptr,
    out_addrs, lse_addrs, flag_addrs,
    stride_qb, stride_qh, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    slot_o, slot_l, slot_f, q_heads, kv_heads, batch_size, qk_scale, epoch,
    WORLD: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    kv_head = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)
    split = tl.program_id(2)
    num_splits = tl.num_programs(2)

    # This program's chunk of the local shard, in whole BLOCK_N tiles.
    seq_len = tl.load(seq_lens_ptr + batch)
    split_len = tl.cdiv(tl.cdiv(seq_len, num_splits), BLOCK_N) * BLOCK_N
    start = split * split_len
    end = tl.minimum(start + split_len, seq_len)

    # The GROUP query heads sharing this KV head are the rows of the tile.
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    head_m = kv_head * GROUP + offs_m
    mask_m = offs_m < GROUP
    mask_d = offs_d < HEAD_DIM
    q = tl.load(q_ptr + batch * stride_qb + head_m[:, None] * stride_qh + offs_d[None, :],
                mask=mask_m[:, None] & mask_d[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)

    # Online softmax in base 2 over the chunk; q stays in registers for the loop.
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    k_head = k_ptr + batch * stride_kb + kv_head * stride_kh
    v_head = v_ptr + batch * stride_vb + kv_head * stride_vh
    for start_n in range(start, end, BLOCK_N):
        cols = start_n + offs_n
        mask_n = cols < end
        kv_mask = mask_n[:, None] & mask_d[None, :]
        k = tl.load(k_head + cols[:, None] * stride_kn + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_head + cols[:, None] * stride_vn + offs_d[None, :], mask=kv_mask, other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # [M, N]
        qk = tl.where(mask_n[None, :], qk, float("-inf"))
        m_i, l_i, acc = online_softmax_step(qk, v, m_i, l_i, acc, DOT_PRECISION)

    out, lse = normalized_partial(m_i, l_i, acc)

    # Element offsets of this tile inside the receive buffers (same on every rank).
    tile_row = (split * batch_size + batch) * q_heads
    o_offs = slot_o + (tile_row + head_m[:, None]) * HEAD_DIM + offs_d[None, :]
    l_offs = slot_l + tile_row + head_m
    f_off = slot_f + (split * batch_size + batch) * kv_heads + kv_head
    tile_mask = mask_m[:, None] & mask_d[None, :]
    for peer in tl.static_range(WORLD):
        o_base = tl.load(out_addrs + peer).to(tl.pointer_type(tl.float32))
        l_base = tl.load(lse_addrs + peer).to(tl.pointer_type(tl.float32))
        f_base = tl.load(flag_addrs + peer).to(tl.pointer_type(tl.int32))
        tl.store(o_base + o_offs, out, mask=tile_mask)
        tl.store(l_base + l_offs, lse, mask=mask_m)
        # Every thread's stores are issued before the flag; the release at system
        # scope makes them visible to the peer that acquires the flag.
        tl.debug_barrier()
        tl.atomic_xchg(f_base + f_off, epoch, sem="release", scope="sys")


@triton.jit
def _wait_combine_kernel(
    out_parts_ptr, lse_parts_ptr, flags_ptr, out_ptr, lse_ptr,
    slot_o, slot_l, n_parts, q_heads, kv_heads, batch_size, epoch,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_P: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # One program merges one row (one query head of one sequence) over every part
    # (part = rank * splits + split): it waits until every part's flag says its tile
    # has landed, then folds the parts in, BLOCK_P at a time.
    head = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)
    kv_head = head // GROUP
    offs_p = tl.arange(0, BLOCK_P)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM

    # Wait first: spin on each part's flag in turn, with a *scalar* acquire atomic at
    # system scope, so the merge loop below carries no spin. (A `while` whose carried
    # value is a vector of atomics - `while tl.min(seen, 0) < epoch: seen =
    # tl.atomic_add(flag_ptrs, ...)` - crashes Triton 3.6's layout pass
    # TritonGPURemoveLayoutConversions on sm_90; a scalar loop carry does not.)
    flag_base = flags_ptr + batch * kv_heads + kv_head
    for part in range(0, n_parts):
        flag_ptr = flag_base + part * batch_size * kv_heads
        seen = tl.atomic_add(flag_ptr, 0, sem="acquire", scope="sys")
        while seen < epoch:
            seen = tl.atomic_add(flag_ptr, 0, sem="acquire", scope="sys")
    # A scalar atomic is issued by one thread; the barrier orders the other threads'
    # reads of the parts after its acquires.
    tl.debug_barrier()

    # The running max and sum are kept as [BLOCK_D] vectors (every lane the same value),
    # so that everything after the wait shares the layout of the output row.
    m_i = tl.full((BLOCK_D,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_D,), tl.float32)
    acc = tl.zeros((BLOCK_D,), tl.float32)
    for start_p in range(0, n_parts, BLOCK_P):
        parts = start_p + offs_p
        mask_p = parts < n_parts
        rows = (parts * batch_size + batch) * q_heads + head
        # .cg: read from L2, never from a stale L1 line of an earlier round.
        lse = tl.load(lse_parts_ptr + slot_l + rows, mask=mask_p, other=float("-inf"),
                      cache_modifier=".cg")
        o = tl.load(out_parts_ptr + slot_o + rows[:, None] * HEAD_DIM + offs_d[None, :],
                    mask=mask_p[:, None] & mask_d[None, :], other=0.0, cache_modifier=".cg")
        m_new = tl.maximum(m_i, tl.max(lse, 0))
        # While every part seen is empty (-inf), shift by 0 so exp() gives 0, not NaN.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_safe)
        w = tl.exp(lse[:, None] - m_safe[None, :])  # [BLOCK_P, BLOCK_D]
        # An empty part's output is meaningless (it may be NaN): never multiply it by 0.
        o = tl.where(w > 0.0, o, 0.0)
        acc = acc * alpha + tl.sum(w * o, 0)
        l_i = l_i * alpha + tl.sum(w, 0)
        m_i = m_new

    nonempty = l_i > 0.0
    l_safe = tl.where(nonempty, l_i, 1.0)
    row = batch * q_heads + head
    tl.store(out_ptr + row * HEAD_DIM + offs_d, (acc / l_safe).to(out_ptr.dtype.element_ty),
             mask=mask_d)
    # the LSE, from lane 0 of the vector (a masked vector store, no scalar select)
    lse_row = tl.where(nonempty, m_i + tl.log(l_safe), float("-inf"))
    tl.store(lse_ptr + row + offs_d * 0, lse_row, mask=offs_d == 0)


@triton.jit
def _push_rows_kernel(
    out_ptr, lse_ptr, out_addrs, lse_addrs, flag_addrs, slot_o, slot_l, slot_f, epoch,
    WORLD: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # Partials computed elsewhere (one row = one query head of one sequence): store the
    # row into every rank's receive buffers, then flag it (buffers with one split and
    # one flag per row, i.e. kv_heads == q_heads).
    row = tl.program_id(0).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    o = tl.load(out_ptr + row * HEAD_DIM + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    # the row's LSE as a lane-0 vector (no scalar load/store: see _wait_combine_kernel)
    lane0 = offs_d == 0
    lse = tl.load(lse_ptr + row + offs_d * 0, mask=lane0, other=float("-inf"))
    for peer in tl.static_range(WORLD):
        o_base = tl.load(out_addrs + peer).to(tl.pointer_type(tl.float32))
        l_base = tl.load(lse_addrs + peer).to(tl.pointer_type(tl.float32))
        f_base = tl.load(flag_addrs + peer).to(tl.pointer_type(tl.int32))
        tl.store(o_base + slot_o + row * HEAD_DIM + offs_d, o, mask=mask_d)
        tl.store(l_base + slot_l + row + offs_d * 0, lse, mask=lane0)
        tl.debug_barrier()
        tl.atomic_xchg(f_base + slot_f + row, epoch, sem="release", scope="sys")


@dataclass(frozen=True)
class PeerBuffers:
    """One rank's receive buffers and the addresses of every rank's copy of them.

    ``out_addrs[p]`` is the device address of rank p's ``out_parts`` (likewise
    ``lse_addrs``, ``flag_addrs``); entry ``rank`` is this rank's own.
    """

    rank: int
    out_parts: torch.Tensor  # fp32 [2, world, splits, batch, q_heads, head_dim]
    lse_parts: torch.Tensor  # fp32 [2, world, splits, batch, q_heads]
    flags: torch.Tensor  # int32 [world, splits, batch, kv_heads]
    out_addrs: torch.Tensor  # int64 [world]
    lse_addrs: torch.Tensor  # int64 [world]
    flag_addrs: torch.Tensor  # int64 [world]

    @property
    def world(self) -> int:
        return self.out_parts.shape[1]

    @property
    def splits(self) -> int:
        return self.out_parts.shape[2]

    def slots(self, epoch: int, rank: int) -> tuple[int, int, int]:
        """Element offsets of ``rank``'s part in the parity slot of ``epoch``:
        (out_parts, lse_parts, flags)."""
        _, world, splits, batch, q_heads, head_dim = self.out_parts.shape
        parity = epoch % 2
        part_rows = splits * batch * q_heads
        slot_l = (parity * world + rank) * part_rows
        slot_f = rank * splits * batch * self.flags.shape[3]
        return slot_l * head_dim, slot_l, slot_f


@dataclass(frozen=True)
class DecodeShape:
    """What the receive buffers are sized for."""

    world: int
    batch: int
    q_heads: int
    kv_heads: int
    head_dim: int
    splits: int = 1

    def buffer_shapes(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        rows = (self.world, self.splits, self.batch)
        return {
            "out_parts": ((2, *rows, self.q_heads, self.head_dim), torch.float32),
            "lse_parts": ((2, *rows, self.q_heads), torch.float32),
            "flags": ((*rows, self.kv_heads), torch.int32),
        }


def fused_num_splits(batch: int, kv_heads: int, shard_tokens: int, device: torch.device) -> int:
    """KV splits per rank for the fused kernel (the same rule as `flash_decode`)."""
    block_n = 16 if interpreting() else 64
    return choose_num_splits(batch, kv_heads, shard_tokens, sm_count(device), block_n)


def local_peer_buffers(shape: DecodeShape, device: torch.device) -> list[PeerBuffers]:
    """A simulated world in one process: ``shape.world`` sets of receive buffers that
    address each other (for tests under the interpreter, or one GPU)."""
    allocated = [
        {name: torch.zeros(s, dtype=dt, device=device)
         for name, (s, dt) in shape.buffer_shapes().items()}
        for _ in range(shape.world)
    ]

    def addrs(name: str) -> torch.Tensor:
        return torch.tensor([a[name].data_ptr() for a in allocated], dtype=torch.int64,
                            device=device)

    tables = {name: addrs(name) for name in ("out_parts", "lse_parts", "flags")}
    return [
        PeerBuffers(rank, a["out_parts"], a["lse_parts"], a["flags"], tables["out_parts"],
                    tables["lse_parts"], tables["flags"])
        for rank, a in enumerate(allocated)
    ]


@dataclass(frozen=True)
class KvShard:
    """This rank's slice of every sequence's KV cache.

    k, v: [batch, kv_heads, shard_capacity, head_dim]; seq_lens: int32 [batch] tokens
    held here (0 allowed).
    """

    k: torch.Tensor
    v: torch.Tensor
    seq_lens: torch.Tensor


def attend_and_push(q: torch.Tensor, shard: KvShard, bufs: PeerBuffers, epoch: int) -> None:
    """Partial attention of ``q`` [batch, q_heads, head_dim] over ``shard``, each
    (split, batch, KV head) tile stored into every rank's receive buffers and flagged
    with ``epoch`` (>= 1, increasing by one per call on every rank)."""
    batch, q_heads, head_dim = q.shape
    kv_heads = shard.k.shape[1]
    if q_heads % kv_heads or shard.k.shape[-1] != head_dim or shard.v.shape != shard.k.shape:
        raise ValueError(f"bad shapes: q {tuple(q.shape)}, k {tuple(shard.k.shape)}, "
                         f"v {tuple(shard.v.shape)}")
    if tuple(bufs.out_parts.shape[3:]) != (batch, q_heads, head_dim):
        raise ValueError(f"buffers sized for {tuple(bufs.out_parts.shape[3:])}, "
                         f"q is {tuple(q.shape)}")
    if q.stride(-1) != 1 or shard.k.stride(-1) != 1 or shard.v.stride(-1) != 1:
        raise ValueError("head_dim must be the contiguous last dimension of q, k and v")
    group = q_heads // kv_heads
    slot_o, slot_l, slot_f = bufs.slots(epoch, bufs.rank)
    block_n = 16 if interpreting() else 64
    seq_lens = shard.seq_lens.to(device=q.device, dtype=torch.int32)
    launchable(_attend_push_kernel)[(kv_heads, batch, bufs.splits)](
        q, shard.k, shard.v, seq_lens, bufs.out_addrs, bufs.lse_addrs, bufs.flag_addrs,
        q.stride(0), q.stride(1), *shard.k.stride()[:3], *shard.v.stride()[:3],
        slot_o, slot_l, slot_f, q_heads, kv_heads, batch, head_dim ** -0.5 * LOG2E, epoch,
        WORLD=bufs.world, GROUP=group, HEAD_DIM=head_dim,
        BLOCK_M=max(16, triton.next_power_of_2(group)), BLOCK_N=block_n,
        BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
        UPCAST=interpreting(), DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=1 if interpreting() else 4, num_stages=1 if interpreting() else 3,
    )


def combine_from_peers(
    bufs: PeerBuffers, epoch: int, out_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Wait for every rank's round-``epoch`` tiles and merge them by LSE.

    Returns out [batch, q_heads, head_dim] in ``out_dtype`` and lse [batch, q_heads] fp32.
    """
    _, world, splits, batch, q_heads, head_dim = bufs.out_parts.shape
    kv_heads = bufs.flags.shape[3]
    slot_o, slot_l, _ = bufs.slots(epoch, 0)
    out = torch.empty((batch, q_heads, head_dim), dtype=out_dtype, device=bufs.out_parts.device)
    lse = torch.empty((batch, q_heads), dtype=torch.float32, device=bufs.out_parts.device)
    n_parts = world * splits
    launchable(_wait_combine_kernel)[(q_heads, batch)](
        bufs.out_parts, bufs.lse_parts, bufs.flags, out, lse,
        slot_o, slot_l, n_parts, q_heads, kv_heads, batch, epoch,
        GROUP=q_heads // kv_heads, HEAD_DIM=head_dim,
        BLOCK_P=min(64, triton.next_power_of_2(n_parts)),
        BLOCK_D=triton.next_power_of_2(head_dim), num_warps=1 if interpreting() else 4,
    )
    return out, lse


def push_partials(out: torch.Tensor, lse: torch.Tensor, bufs: PeerBuffers, epoch: int) -> None:
    """Store partials computed elsewhere - out [batch, heads, head_dim] (any float dtype),
    lse fp32 [batch, heads] - into every rank's buffers (sized with ``splits=1`` and
    ``kv_heads == heads``) and flag each row with ``epoch``; `combine_from_peers` merges."""
    batch, heads, head_dim = out.shape
    if tuple(bufs.out_parts.shape[2:]) != (1, batch, heads, head_dim) or \
            bufs.flags.shape[3] != heads:
        raise ValueError(f"buffers {tuple(bufs.out_parts.shape)} do not take rows of "
                         f"{tuple(out.shape)} (need one split and a flag per head)")
    slot_o, slot_l, slot_f = bufs.slots(epoch, bufs.rank)
    launchable(_push_rows_kernel)[(batch * heads,)](
        out.contiguous(), lse.to(torch.float32).contiguous(), bufs.out_addrs, bufs.lse_addrs,
        bufs.flag_addrs, slot_o, slot_l, slot_f, epoch,
        WORLD=bufs.world, HEAD_DIM=head_dim, BLOCK_D=triton.next_power_of_2(head_dim),
        num_warps=1,
    )
