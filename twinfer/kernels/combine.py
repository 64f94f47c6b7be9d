"""Exact merge of partial attention results by their log-sum-exp (LSE).

If a query's keys are split into disjoint parts and each part p yields a softmax-
normalized output ``o_p`` and its log-sum-exp ``lse_p = log(sum_j exp(s_j))``, then
attention over all the keys is

    lse = log(sum_p exp(lse_p))
    out = sum_p exp(lse_p - lse) * o_p

This is stage 2 of FlashDecoding's split-KV decode (Dao et al., "Flash-Decoding for
long-context inference", 2023; `twinfer.kernels.decode` does it inside its own launch),
the merge of KV shards held by other GPUs in the `kv_sharded` layout, and the
hierarchical reduction of FA Pool. FlashDecoding++
(Hong et al., 2023) removes this rescaling with a unified max; we keep the exact
per-part maximum because parts may come from other devices whose score range we
cannot bound in advance.

Assumptions: parts are [n_parts, *rows, head_dim]; an empty part (no keys) has
``lse_p = -inf`` and its output is ignored whatever it holds (NaN included); a row
whose parts are all empty gets ``out = 0`` and ``lse = -inf``. LSEs are natural logs.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from twinfer.kernels.backend import Backend, interpreting, launchable, next_pow2, use_triton


@triton.jit
def _lse_combine_kernel(
    o_ptr, lse_ptr, out_ptr, out_lse_ptr, n_rows, n_parts,
    HEAD_DIM: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # One program merges all parts of BLOCK_R rows (a row: one query token of one head).
    # Parts are contiguous [n_parts, n_rows, HEAD_DIM] / [n_parts, n_rows].
    offs_r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    mask_r = offs_r < n_rows
    mask_d = offs_d < HEAD_DIM

    # Online merge over chunks of BLOCK_S parts, loaded at once (the merge is
    # latency-bound: one round trip per chunk, not per part). m_i is the running
    # maximum LSE, l_i the running sum of exp(lse_p - m_i), acc the weighted output.
    m_i = tl.full([BLOCK_R], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_R], tl.float32)
    acc = tl.zeros([BLOCK_R, BLOCK_D], tl.float32)
    for start_s in range(0, n_parts, BLOCK_S):
        parts = start_s + offs_s
        mask_rs = mask_r[:, None] & (parts[None, :] < n_parts)  # [R, S]
        lse = tl.load(lse_ptr + parts[None, :] * n_rows + offs_r[:, None], mask=mask_rs,
                      other=float("-inf"))
        m_new = tl.maximum(m_i, tl.max(lse, 1))
        # While every part seen so far is empty, m_new is -inf: shift by 0 instead so
        # that exp() sees -inf - 0 = -inf (weight 0) rather than -inf - -inf = NaN.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_safe)
        w = tl.exp(lse - m_safe[:, None])  # [R, S]
        rows = parts[None, :, None] * n_rows + offs_r[:, None, None]  # [R, S, 1]
        o = tl.load(o_ptr + rows * HEAD_DIM + offs_d[None, None, :],
                    mask=mask_rs[:, :, None] & mask_d[None, None, :], other=0.0)
        # An empty part's output is meaningless (it may be NaN): never multiply it by 0.
        o = tl.where(w[:, :, None] > 0.0, o.to(tl.float32), 0.0)
        acc = acc * alpha[:, None] + tl.sum(w[:, :, None] * o, 1)
        l_i = l_i * alpha + tl.sum(w, 1)
        m_i = m_new

    nonempty = l_i > 0.0
    l_safe = tl.where(nonempty, l_i, 1.0)
    out = acc / l_safe[:, None]
    out_ptrs = out_ptr + offs_r[:, None] * HEAD_DIM + offs_d[None, :]
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=mask_r[:, None] & mask_d[None, :])
    tl.store(out_lse_ptr + offs_r, tl.where(nonempty, m_i + tl.log(l_safe), float("-inf")),
             mask=mask_r)


@functools.lru_cache(maxsize=256)
def _combine_plan(n_parts: int, rows: int, head_dim: int, interp: bool):
    block_d = max(16, next_pow2(head_dim))
    if interp:  # few, large programs: the interpreter pays per program
        block_r, block_s = 64, min(8, next_pow2(n_parts))
    else:  # many small programs: rows of a small batch spread over the SMs
        block_s = min(16, next_pow2(n_parts))
        block_r = 1 if rows <= 4096 else 4
    grid = (-(-rows // block_r),)
    return launchable(_lse_combine_kernel), grid, dict(
        HEAD_DIM=head_dim, BLOCK_R=block_r, BLOCK_S=block_s, BLOCK_D=block_d, num_warps=4)


def combine_into(outs: torch.Tensor, lses: torch.Tensor, out: torch.Tensor, lse: torch.Tensor):
    """Launch the merge kernel: outs [n_parts, rows, D] and lses [n_parts, rows]
    (contiguous) into out [rows, D] and lse [rows] fp32 (contiguous, any leading shape)."""
    n_parts, rows, head_dim = outs.shape
    kernel, grid, constexprs = _combine_plan(n_parts, rows, head_dim, interpreting())
    kernel[grid](outs, lses, out, lse, rows, n_parts, **constexprs)


def lse_combine_ref(outs: torch.Tensor, lses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch reference of `lse_combine` (computes in fp32, or fp64 for fp64 inputs)."""
    compute = torch.promote_types(outs.dtype, torch.float32)
    lses_c = lses.to(compute)
    lse = torch.logsumexp(lses_c, dim=0)  # [*rows]; -inf where every part is empty
    lse_safe = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    w = torch.exp(lses_c - lse_safe)  # [n_parts, *rows]
    parts = torch.where(w.unsqueeze(-1) > 0, outs.to(compute), 0.0)
    out = (w.unsqueeze(-1) * parts).sum(0)
    return out.to(outs.dtype), lse.to(torch.promote_types(lses.dtype, torch.float32))


def lse_combine(
    outs: torch.Tensor, lses: torch.Tensor, *, backend: Backend = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge partial attention outputs exactly.

    Args:
        outs: [n_parts, batch, heads, head_dim], any float dtype; each part normalized
            over its own keys. Any number of leading row dims is accepted after n_parts.
        lses: [n_parts, batch, heads], natural-log LSE of each part; -inf marks an empty
            part.

    Returns:
        out [batch, heads, head_dim] in ``outs.dtype`` and lse [batch, heads] fp32.
    """
    if outs.shape[:-1] != lses.shape:
        raise ValueError(f"outs {tuple(outs.shape)} and lses {tuple(lses.shape)} disagree")
    if not use_triton(backend, outs):
        return lse_combine_ref(outs, lses)
    row_shape, head_dim = outs.shape[1:-1], outs.shape[-1]
    n_parts = outs.shape[0]
    outs_flat = outs.reshape(n_parts, -1, head_dim).contiguous()
    lses_flat = lses.reshape(n_parts, -1).to(torch.float32).contiguous()
    out = torch.empty((outs_flat.shape[1], head_dim), dtype=outs.dtype, device=outs.device)
    lse = torch.empty(outs_flat.shape[1], dtype=torch.float32, device=outs.device)
    if out.numel():
        combine_into(outs_flat, lses_flat, out, lse)
    return out.view(*row_shape, head_dim), lse.view(row_shape)
