"""Split-KV flash decode with native grouped-query attention, contiguous or paged KV.

Algorithm (FlashDecoding: Dao, Haziza, Massa, Sizov, "Flash-Decoding for long-context
inference", 2023): at decode time a sequence brings one query token (or a few), so
one program per (sequence, head) leaves most of the GPU idle when the batch is small.
Stage 1 therefore also splits the context into ``num_splits`` chunks; each program
streams its chunk of K/V once through an online softmax (FlashAttention-2) and writes
a normalized partial output and its log-sum-exp. Stage 2 merges the partials exactly
by their LSE (as `twinfer.kernels.combine`), inside the same launch: the last split of
a (sequence, KV head) to finish, counted by an atomic, does the merge. One launch
instead of two saves a launch's host time (tens of microseconds on the benchmark host),
which at small batch and context exceeds the GPU time; the serial merge costs 1-3 us of
GPU time at batch 1. With a single split stage 1 writes the final output directly.
FlashDecoding++ (Hong et al., 2023) avoids stage 2's rescaling with a unified max
value; we keep the exact merge (no assumption on score ranges). Launch configuration
and the split heuristic live in `twinfer.kernels.decode_tuning`.

Grouped-query attention is native: a program owns one KV head and puts all of that
head's query heads (times the query tokens) in the M dimension of its tile, padded to
at least 16 rows for ``tl.dot``; each K/V tile is read from memory once per group,
never expanded. The cost is dominated by reading K/V; the kernel is bandwidth-bound.

Paged KV (PagedAttention: Kwon et al., "Efficient Memory Management for Large Language
Model Serving with PagedAttention", SOSP 2023) is the same kernel with ``PAGED=True``:
token ``n`` of sequence ``b`` lives in page ``block_table[b, n // PAGE_SIZE]`` at row
``n % PAGE_SIZE``.

Assumptions: ``seq_lens[b]`` counts every token in the cache for sequence b, the new
query tokens included (they were appended before the call); with ``q_len > 1`` query
token t sits at position ``seq_lens[b] - q_len + t`` and attends causally. Head dim is
the last, contiguous dimension of every tensor. ``q_heads`` is a multiple of
``kv_heads``. Page size is a power of two. Inputs fp16/bf16 (fp32 accepted), fp32
accumulation; lse is natural-log fp32. A sequence with ``seq_lens[b] == 0`` gets a
zero output and ``lse = -inf``. The arrival counters are one buffer per device: decodes
on several streams of one device at the same time are not supported.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from twinfer.kernels.backend import (
    Backend,
    interpreting,
    launch,
    next_pow2,
    pdl_epilogue,
    pdl_prologue,
    sm_count,
    use_triton,
)
from twinfer.kernels.decode_tuning import DecodeTiles, choose_num_splits, default_tiles

__all__ = ["DecodeTiles", "choose_num_splits", "flash_decode", "flash_decode_ref",
           "gather_pages", "paged_flash_decode", "paged_flash_decode_ref"]

LOG2E = 1.4426950408889634
LN2: tl.constexpr = tl.constexpr(0.6931471805599453)


@triton.jit
def online_softmax_step(qk, v, m_i, l_i, acc, DOT_PRECISION: tl.constexpr):
    """Fold one tile into the running state: qk [M, N] masked scores (base 2, -inf where
    invalid), v [N, D]; m_i, l_i [M] running max and sum, acc [M, D] running output.
    The state is rescaled to the new row maximum; a row with no valid key yet keeps
    m = -inf, and shifting by 0 then gives p = 0 instead of NaN."""
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(qk - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return m_new, l_i, acc


@triton.jit
def normalized_partial(m_i, l_i, acc):
    """The normalized partial output [M, D] and its natural-log LSE [M]; a row that saw
    no key gives 0 and -inf."""
    nonempty = l_i > 0.0
    l_safe = tl.where(nonempty, l_i, 1.0)
    out = acc / l_safe[:, None]
    lse = tl.where(nonempty, (m_i + tl.log2(l_safe)) * LN2, float("-inf"))
    return out, lse


@triton.jit
def _split_kv_decode_kernel(
    q_ptr, k_ptr, v_ptr, seq_lens_ptr, block_table_ptr, out_ptr, lse_ptr,
    o_part_ptr, lse_part_ptr, arrivals_ptr,
    stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn, stride_tb,
    qk_scale, num_splits,
    Q_LEN: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    PAGED: tl.constexpr, PAGE_SIZE: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr, PDL: tl.constexpr,
):
    pdl_prologue(PDL)
    # Grid: (kv_heads, batch, num_splits). q, out, lse and the partials are contiguous
    # [.., q_heads, D] tensors, so their strides follow from the grid (fewer arguments,
    # cheaper launches); K/V may be any strided view.
    kv_head = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)
    split = tl.program_id(2)
    q_heads = tl.num_programs(0) * GROUP
    rows_per_split = tl.num_programs(1) * Q_LEN * q_heads

    # Each sequence divides its own length into num_splits chunks of whole BLOCK_N
    # tiles, so short and long sequences of one batch both use every split.
    seq_len = tl.load(seq_lens_ptr + batch)
    split_len = tl.cdiv(tl.cdiv(seq_len, num_splits), BLOCK_N) * BLOCK_N
    start = split * split_len
    end = tl.minimum(start + split_len, seq_len)

    # Tile row r is query token r // GROUP of query head kv_head * GROUP + r % GROUP.
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    tok_m = offs_m // GROUP
    head_m = kv_head * GROUP + offs_m % GROUP
    mask_m = offs_m < Q_LEN * GROUP
    mask_d = offs_d < HEAD_DIM
    row_m = (batch * Q_LEN + tok_m) * q_heads + head_m  # row of q / out / lse

    # The group's queries stay in registers for the whole loop.
    q = tl.load(q_ptr + row_m[:, None] * HEAD_DIM + offs_d[None, :],
                mask=mask_m[:, None] & mask_d[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    # Causal limit among the new tokens: row r sees keys up to its own position.
    last_key = seq_len - Q_LEN + tok_m

    # Online softmax state, in base 2 (qk_scale folds in log2(e)).
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    k_head = k_ptr + kv_head * stride_kh
    v_head = v_ptr + kv_head * stride_vh

    for start_n in range(start, end, BLOCK_N):
        cols = start_n + offs_n
        mask_n = cols < end
        # Where do this tile's K/V rows live?
        if PAGED:
            if PAGE_SIZE >= BLOCK_N:
                # Tiles never straddle pages (split_len and PAGE_SIZE are multiples of
                # BLOCK_N): one block-table entry per tile.
                page = tl.load(block_table_ptr + batch * stride_tb + start_n // PAGE_SIZE)
            else:
                page = tl.load(block_table_ptr + batch * stride_tb + cols // PAGE_SIZE,
                               mask=mask_n, other=0)
            page = page.to(tl.int64)
            k_rows = page * stride_kb + (cols % PAGE_SIZE) * stride_kn
            v_rows = page * stride_vb + (cols % PAGE_SIZE) * stride_vn
        else:
            k_rows = batch * stride_kb + cols * stride_kn
            v_rows = batch * stride_vb + cols * stride_vn
        kv_mask = mask_n[:, None] & mask_d[None, :]
        k = tl.load(k_head + k_rows[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_head + v_rows[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)

        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # [M, N]
        if Q_LEN > 1:
            valid = mask_n[None, :] & (cols[None, :] <= last_key[:, None])
        else:
            valid = mask_n[None, :]
        qk = tl.where(valid, qk, float("-inf"))

        m_i, l_i, acc = online_softmax_step(qk, v, m_i, l_i, acc, DOT_PRECISION)

    # Normalized partial output and its natural-log LSE; an empty chunk gives 0, -inf.
    out, lse = normalized_partial(m_i, l_i, acc)
    mask_md = mask_m[:, None] & mask_d[None, :]
    if num_splits == 1:  # the whole context was ours: this is the answer
        tl.store(out_ptr + row_m[:, None] * HEAD_DIM + offs_d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=mask_md)
        tl.store(lse_ptr + row_m, lse, mask=mask_m)
    else:
        part_m = split * rows_per_split + row_m
        tl.store(o_part_ptr + part_m[:, None] * HEAD_DIM + offs_d[None, :], out, mask=mask_md)
        tl.store(lse_part_ptr + part_m, lse, mask=mask_m)
        # Stage 2 in the same launch: the last split of this (sequence, KV head) to
        # finish merges all of them. The barrier orders every thread's partial stores
        # before the release of the arrival counter (acq_rel at GPU scope); the
        # acquire lets the last arrival read the other splits' partials, from L2 (.cg).
        tl.debug_barrier()
        counter = arrivals_ptr + batch * tl.num_programs(0) + kv_head
        arrived = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
        if arrived == num_splits - 1:
            tl.debug_barrier()
            m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
            l_i = tl.zeros([BLOCK_M], tl.float32)
            acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
            for part in range(0, num_splits):
                part_m = part * rows_per_split + row_m
                lse_p = tl.load(lse_part_ptr + part_m, mask=mask_m, other=float("-inf"),
                                cache_modifier=".cg")
                o_p = tl.load(o_part_ptr + part_m[:, None] * HEAD_DIM + offs_d[None, :],
                              mask=mask_md, other=0.0, cache_modifier=".cg")
                # Exact LSE merge (see combine.py); empty splits weigh exp(-inf) = 0.
                m_new = tl.maximum(m_i, lse_p)
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
                alpha = tl.exp(m_i - m_safe)
                w = tl.exp(lse_p - m_safe)
                acc = acc * alpha[:, None] + w[:, None] * o_p
                l_i = l_i * alpha + w
                m_i = m_new
            nonempty = l_i > 0.0
            l_safe = tl.where(nonempty, l_i, 1.0)
            tl.store(out_ptr + row_m[:, None] * HEAD_DIM + offs_d[None, :],
                     (acc / l_safe[:, None]).to(out_ptr.dtype.element_ty), mask=mask_md)
            tl.store(lse_ptr + row_m, tl.where(nonempty, m_i + tl.log(l_safe), float("-inf")),
                     mask=mask_m)
            tl.store(counter, 0)  # re-arm for the next launch
    pdl_epilogue(PDL)


@dataclass(frozen=True)
class _Plan:
    """Everything about a launch that depends only on shapes (cached per shape)."""

    grid: tuple[int, int, int]
    num_splits: int
    constexprs: tuple  # (name, value) pairs, so that a plan is hashable


@functools.lru_cache(maxsize=1024)
def _plan(batch, q_len, q_heads, kv_heads, head_dim, capacity, dtype, page_size, num_splits,
          tiles, sms, interp) -> _Plan:
    paged = page_size > 0
    group = q_heads // kv_heads
    block_m = max(16, next_pow2(q_len * group))
    tiles = tiles or default_tiles(head_dim, block_m, paged)
    if num_splits is None:
        num_splits = choose_num_splits(batch, kv_heads, capacity, sms, tiles.block_n)
    num_splits = max(1, min(num_splits, -(-max(capacity, 1) // tiles.block_n)))
    constexprs = dict(
        Q_LEN=q_len, GROUP=group, HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=tiles.block_n,
        BLOCK_D=max(16, next_pow2(head_dim)), PAGED=paged, PAGE_SIZE=max(page_size, 1),
        UPCAST=interp, DOT_PRECISION="ieee" if dtype == torch.float32 else "tf32",
        num_warps=tiles.num_warps, num_stages=tiles.num_stages,
    )
    return _Plan((kv_heads, batch, num_splits), num_splits, tuple(constexprs.items()))


_arrivals: dict = {}


def _arrival_counters(device: torch.device, count: int) -> torch.Tensor:
    """Zeroed int32 counters, one per (sequence, KV head), kept per device: each launch
    leaves them at zero again. One decode at a time per device (a single stream, as the
    executor runs); concurrent decodes on several streams would share them."""
    counters = _arrivals.get(device)
    if counters is None or counters.numel() < count:
        counters = torch.zeros(max(count, 1024), dtype=torch.int32, device=device)
        _arrivals[device] = counters
    return counters


def _aligned(t: torch.Tensor) -> bool:
    return t.data_ptr() % 16 == 0


def _decode(q, k, v, seq_lens, block_table, page_size, sm_scale, num_splits, tiles):
    """Shared launcher of the contiguous (page_size 0) and the paged decode. Kept lean:
    at small batch and context the GPU work is a few microseconds."""
    if q.dim() == 4:
        batch, q_len, q_heads, head_dim = q.shape
    else:
        (batch, q_heads, head_dim), q_len = q.shape, 1
    if page_size:
        kv_heads, capacity = k.shape[2], block_table.shape[1] * page_size
        strides = (k.stride(0), k.stride(2), k.stride(1),  # page, head, row in page
                   v.stride(0), v.stride(2), v.stride(1), block_table.stride(0))
    else:
        kv_heads, capacity = k.shape[1], k.shape[2]
        strides = (k.stride(0), k.stride(1), k.stride(2),  # batch, head, token
                   v.stride(0), v.stride(1), v.stride(2), 0)
    if q_heads % kv_heads or k.shape[-1] != head_dim or v.shape != k.shape:
        raise ValueError(f"bad shapes: q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    if q.dtype != k.dtype or k.dtype != v.dtype:
        raise ValueError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("head_dim must be the contiguous last dimension of k and v")
    if not q.is_contiguous():
        q = q.contiguous()
    if seq_lens.dtype != torch.int32:
        seq_lens = seq_lens.to(torch.int32)
    interp = interpreting()
    plan = _plan(batch, q_len, q_heads, kv_heads, head_dim, capacity, q.dtype, page_size,
                 num_splits, tiles, sm_count(q.device), interp)
    splits = plan.num_splits

    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
    table = block_table if page_size else seq_lens
    if splits == 1:  # stage 1 writes the answer; the partial buffers are never touched
        o_part, lse_part, arrivals = lse, lse, seq_lens
    else:
        rows = batch * q_len * q_heads
        o_part = torch.empty((splits, rows, head_dim), dtype=torch.float32, device=q.device)
        lse_part = torch.empty((splits, rows), dtype=torch.float32, device=q.device)
        arrivals = _arrival_counters(q.device, batch * kv_heads)
    scale = (head_dim ** -0.5 if sm_scale is None else sm_scale) * LOG2E
    args = (q, k, v, seq_lens, table, out, lse, o_part, lse_part, arrivals, *strides,
            scale, splits)
    launch(_split_kv_decode_kernel, plan.grid, args, plan.constexprs,
           _launch_key(plan, strides, q, k, v, seq_lens, table, interp))
    return out, lse


def _launch_key(plan, strides, q, k, v, seq_lens, table, interp) -> tuple:
    """What Triton specialized the compiled kernel on, beyond the plan's constexprs: the
    dtypes, the strides' values and pointer alignment (buffers allocated here are always
    aligned); see `twinfer.kernels.backend.launch`."""
    return (plan, q.dtype, strides, q.device, _aligned(q), _aligned(k), _aligned(v),
            _aligned(seq_lens), _aligned(table), interp)


def flash_decode(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, seq_lens: torch.Tensor,
    *, sm_scale: float | None = None, num_splits: int | None = None,
    tiles: DecodeTiles | None = None, backend: Backend = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of new query tokens over a contiguous KV cache.

    Args:
        q: [batch, q_heads, head_dim] (one token per sequence), or
            [batch, q_len, q_heads, head_dim] for a few tokens (causal among them).
        k_cache, v_cache: [batch, kv_heads, max_seq, head_dim]; q_heads % kv_heads == 0.
        seq_lens: int [batch], valid tokens per sequence (new tokens included).
        sm_scale: softmax scale, default head_dim ** -0.5.
        num_splits: KV splits of stage 1; default `choose_num_splits` from batch,
            kv_heads, max_seq and the device's multiprocessor count.
        tiles: stage-1 launch configuration; default `default_tiles`.

    Returns:
        out shaped like q (q's dtype) and lse [batch, q_heads] (or
        [batch, q_len, q_heads]) fp32, natural log.
    """
    if not use_triton(backend, q):
        return flash_decode_ref(q, k_cache, v_cache, seq_lens, sm_scale=sm_scale)
    return _decode(q, k_cache, v_cache, seq_lens, None, 0, sm_scale, num_splits, tiles)


def paged_flash_decode(
    q: torch.Tensor, k_pages: torch.Tensor, v_pages: torch.Tensor,
    block_table: torch.Tensor, seq_lens: torch.Tensor,
    *, sm_scale: float | None = None, num_splits: int | None = None,
    tiles: DecodeTiles | None = None, backend: Backend = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """`flash_decode` reading K/V through a block table (PagedAttention layout).

    Args:
        q: [batch, q_heads, head_dim] or [batch, q_len, q_heads, head_dim].
        k_pages, v_pages: [num_blocks, page_size, kv_heads, head_dim], page_size a
            power of two (16..256 tested).
        block_table: int32 [batch, max_blocks]; entries past a sequence's last page are
            never read.
        seq_lens: int [batch]; seq_lens[b] <= max_blocks * page_size.

    Returns:
        out shaped like q and lse fp32, as `flash_decode`.
    """
    page_size = k_pages.shape[1]
    if page_size & (page_size - 1):
        raise ValueError(f"page_size must be a power of two, got {page_size}")
    if not use_triton(backend, q):
        return paged_flash_decode_ref(q, k_pages, v_pages, block_table, seq_lens,
                                      sm_scale=sm_scale)
    if block_table.dtype != torch.int32:
        block_table = block_table.to(torch.int32)
    return _decode(q, k_pages, v_pages, seq_lens, block_table, page_size, sm_scale,
                   num_splits, tiles)


def flash_decode_ref(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, seq_lens: torch.Tensor,
    *, sm_scale: float | None = None, compute_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch reference of `flash_decode`: fp32 math (fp64 for fp64 inputs) unless
    ``compute_dtype`` says otherwise; GQA by reshaping, never by copying K/V."""
    q4 = q if q.dim() == 4 else q.unsqueeze(1)
    batch, q_len, q_heads, head_dim = q4.shape
    kv_heads, max_seq = k_cache.shape[1], k_cache.shape[2]
    group = q_heads // kv_heads
    cdt = compute_dtype or torch.promote_types(q.dtype, torch.float32)
    scale = head_dim ** -0.5 if sm_scale is None else sm_scale
    # [batch, kv_heads, q_len * group, head_dim], rows ordered (token, head in group)
    qg = q4.to(cdt).view(batch, q_len, kv_heads, group, head_dim).transpose(1, 2)
    qg = qg.reshape(batch, kv_heads, q_len * group, head_dim)
    scores = torch.matmul(qg, k_cache.to(cdt).transpose(-1, -2)) * scale
    # key n is visible to query token t iff n <= seq_len - q_len + t
    last = seq_lens.to(q.device).long()[:, None] - q_len + torch.arange(q_len, device=q.device)
    last = last.repeat_interleave(group, dim=1)  # [batch, q_len * group]
    visible = torch.arange(max_seq, device=q.device) <= last[:, :, None]
    scores = scores.masked_fill(~visible[:, None], float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # [batch, kv_heads, q_len * group]
    probs = torch.exp(scores - torch.where(torch.isinf(lse), 0.0, lse)[..., None])
    out = torch.matmul(probs.to(cdt), v_cache.to(cdt))
    out = out.view(batch, kv_heads, q_len, group, head_dim).transpose(1, 2)
    out = out.reshape(batch, q_len, q_heads, head_dim).to(q.dtype)
    lse = lse.view(batch, kv_heads, q_len, group).transpose(1, 2).reshape(batch, q_len, q_heads)
    lse = lse.to(torch.promote_types(q.dtype, torch.float32))  # fp64 for a fp64 reference
    if q.dim() == 3:
        return out[:, 0], lse[:, 0]
    return out, lse


def gather_pages(pages: torch.Tensor, block_table: torch.Tensor) -> torch.Tensor:
    """[num_blocks, page_size, kv_heads, D] pages -> [batch, kv_heads, max_blocks *
    page_size, D] contiguous cache (unused table entries may hold any index >= -1)."""
    blocks = pages[block_table.long().clamp(min=0)]  # [batch, max_blocks, page, heads, D]
    batch, max_blocks, page_size, heads, head_dim = blocks.shape
    return blocks.view(batch, max_blocks * page_size, heads, head_dim).transpose(1, 2)


def paged_flash_decode_ref(
    q: torch.Tensor, k_pages: torch.Tensor, v_pages: torch.Tensor,
    block_table: torch.Tensor, seq_lens: torch.Tensor,
    *, sm_scale: float | None = None, compute_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch reference of `paged_flash_decode`: gather the pages, then `flash_decode_ref`."""
    return flash_decode_ref(q, gather_pages(k_pages, block_table),
                            gather_pages(v_pages, block_table), seq_lens,
                            sm_scale=sm_scale, compute_dtype=compute_dtype)
