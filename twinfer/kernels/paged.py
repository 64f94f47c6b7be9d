"""Writing new tokens' K/V into a paged KV cache (PagedAttention layout).

PagedAttention (Kwon et al., SOSP 2023) stores the KV cache in fixed-size pages so that
sequences grow without reserving their maximum length up front; a block table maps a
sequence's logical page i to a physical page. The decode kernel that reads this layout
is `twinfer.kernels.decode.paged_flash_decode` (the same kernel as the contiguous one,
``PAGED=True``). This module holds the write side.

Layout: ``k_pages, v_pages`` are [num_blocks, page_size, kv_heads, head_dim]; a token's
slot is ``physical_page * page_size + row_in_page`` (``slot_mapping``, int64, computed
by the cache manager from the block table). A negative slot means "padding token: do not
write", so a padded batch needs no compaction. Assumption: two tokens of one call never
share a slot.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from twinfer.kernels.backend import (
    Backend,
    arg_key,
    interpreting,
    launch,
    next_pow2,
    pdl_epilogue,
    pdl_prologue,
    use_triton,
)


@triton.jit
def _kv_append_kernel(
    k_new_ptr, v_new_ptr, k_pages_ptr, v_pages_ptr, slot_ptr,
    stride_knt, stride_knh, stride_vnt, stride_vnh,
    stride_kpb, stride_kps, stride_kph, stride_vpb, stride_vps, stride_vph,
    kv_heads, page_size,
    HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, PDL: tl.constexpr,
):
    pdl_prologue(PDL)
    # One program copies one token's [kv_heads, head_dim] K and V rows into its slot.
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + token).to(tl.int64)
    if slot >= 0:
        page = slot // page_size
        row = slot % page_size
        offs_h = tl.arange(0, BLOCK_H)
        offs_d = tl.arange(0, BLOCK_D)
        mask = (offs_h[:, None] < kv_heads) & (offs_d[None, :] < HEAD_DIM)
        k = tl.load(k_new_ptr + token * stride_knt + offs_h[:, None] * stride_knh
                    + offs_d[None, :], mask=mask)
        v = tl.load(v_new_ptr + token * stride_vnt + offs_h[:, None] * stride_vnh
                    + offs_d[None, :], mask=mask)
        k_dst = (k_pages_ptr + page * stride_kpb + row * stride_kps
                 + offs_h[:, None] * stride_kph + offs_d[None, :])
        v_dst = (v_pages_ptr + page * stride_vpb + row * stride_vps
                 + offs_h[:, None] * stride_vph + offs_d[None, :])
        tl.store(k_dst, k.to(k_pages_ptr.dtype.element_ty), mask=mask)
        tl.store(v_dst, v.to(v_pages_ptr.dtype.element_ty), mask=mask)
    pdl_epilogue(PDL)


def paged_kv_append_ref(
    k_pages: torch.Tensor, v_pages: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Torch fallback of `paged_kv_append` (index_copy_ into the flattened pages)."""
    slots = slot_mapping.to(device=k_pages.device, dtype=torch.int64)
    keep = slots >= 0
    if not bool(keep.all()):
        slots, k_new, v_new = slots[keep], k_new[keep], v_new[keep]
    heads, head_dim = k_pages.shape[2:]
    k_flat = k_pages.view(-1, heads, head_dim)  # [num_blocks * page_size, heads, D]
    v_flat = v_pages.view(-1, heads, head_dim)
    k_flat.index_copy_(0, slots, k_new.to(k_pages.dtype))
    v_flat.index_copy_(0, slots, v_new.to(v_pages.dtype))


def paged_kv_append(
    k_pages: torch.Tensor, v_pages: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor,
    slot_mapping: torch.Tensor, *, backend: Backend = "auto",
) -> None:
    """Write new tokens' K/V into their pages, in place.

    Args:
        k_pages, v_pages: [num_blocks, page_size, kv_heads, head_dim].
        k_new, v_new: [tokens, kv_heads, head_dim] (any float dtype; cast to the pages').
        slot_mapping: int64 [tokens], ``page * page_size + row``; negative = skip.
    """
    tokens, heads, head_dim = k_new.shape
    if (v_new.shape != k_new.shape or k_pages.shape[2:] != (heads, head_dim)
            or v_pages.shape != k_pages.shape or slot_mapping.shape != (tokens,)):
        raise ValueError(f"bad shapes: pages {tuple(k_pages.shape)}, new "
                         f"{tuple(k_new.shape)}, slots {tuple(slot_mapping.shape)}")
    if not use_triton(backend, k_pages):
        paged_kv_append_ref(k_pages, v_pages, k_new, v_new, slot_mapping)
        return
    if tokens == 0:
        return
    if k_new.stride(-1) != 1 or v_new.stride(-1) != 1 or k_pages.stride(-1) != 1:
        raise ValueError("head_dim must be the contiguous last dimension")
    block_h, block_d = next_pow2(heads), next_pow2(head_dim)
    if slot_mapping.dtype != torch.int64:
        slot_mapping = slot_mapping.to(torch.int64)
    args = (k_new, v_new, k_pages, v_pages, slot_mapping,
            k_new.stride(0), k_new.stride(1), v_new.stride(0), v_new.stride(1),
            k_pages.stride(0), k_pages.stride(1), k_pages.stride(2),
            v_pages.stride(0), v_pages.stride(1), v_pages.stride(2),
            heads, k_pages.shape[1])
    constexprs = (("HEAD_DIM", head_dim), ("BLOCK_H", block_h), ("BLOCK_D", block_d),
                  ("num_warps", 4 if block_h * block_d >= 2048 else 1))
    launch(_kv_append_kernel, (tokens,), args, constexprs,
           ("kv_append", constexprs, arg_key(args), interpreting()))
