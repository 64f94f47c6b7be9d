"""Fused RMSNorm (optionally with the residual add) and rotary position embedding.

RMSNorm (Zhang & Sennrich, 2019) as in Llama: ``y = x / sqrt(mean(x^2) + eps) * w``,
computed in fp32 and rounded once. The fused residual variant first forms
``h = x + residual`` (rounded to the activation dtype, as an unfused model does), then
returns ``(rmsnorm(h), h)``: one read of x and residual, one write of each result,
instead of the four passes the unfused torch ops make.

RoPE (Su et al., "RoFormer", 2021) in the rotate-half layout of Llama / GPT-NeoX: the
first and second halves of each head's vector are the real and imaginary parts,
rotated by ``positions * inv_freq``. cos/sin come from a precomputed table
[max_positions, head_dim] (cos in the first half, sin in the second; built in fp64 by
`rope_cos_sin`, so any frequency scaling can be baked in by the caller). One launch
rotates the query and the key heads of a token together.

Both are memory-bound; the kernels move each byte once. Whether they beat torch is for
the benchmark to say (docs/BENCHMARKS.md); ``backend="auto"`` follows its verdict
through `TRITON_BY_DEFAULT`.
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

# Does "auto" use the Triton kernels on CUDA tensors? Set from the H200 benchmark
# (docs/BENCHMARKS.md): RMSNorm 1.2-2.2x faster than F.rms_norm at 1-16384 tokens,
# add + RMSNorm 1.3-2.2x from 256 tokens, RoPE 9-51x faster than the torch reference.
TRITON_BY_DEFAULT = {"rmsnorm": True, "rope": True}


@triton.jit
def _rmsnorm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr,
    stride_x, stride_r, stride_o, stride_ro, n_cols, eps,
    HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr,
):
    pdl_prologue(PDL)
    # One program normalizes one row; the whole row sits in registers.
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + row * stride_r + cols, mask=mask, other=0.0)
        # Round the sum to the activation dtype, as the unfused model would.
        x = (x.to(tl.float32) + r.to(tl.float32)).to(res_out_ptr.dtype.element_ty)
        tl.store(res_out_ptr + row * stride_ro + cols, x, mask=mask)
    x = x.to(tl.float32)
    inv_rms = tl.rsqrt(tl.sum(x * x, 0) / n_cols + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, (x * inv_rms * w).to(out_ptr.dtype.element_ty),
             mask=mask)
    pdl_epilogue(PDL)


@triton.jit
def _rope_kernel(
    q_ptr, k_ptr, q_out_ptr, k_out_ptr, pos_ptr, cs_ptr,
    stride_qt, stride_qh, stride_kt, stride_kh,
    stride_qot, stride_qoh, stride_kot, stride_koh, stride_cs,
    q_heads, kv_heads,
    HALF: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr,
    BLOCK_HALF: tl.constexpr, PDL: tl.constexpr,
):
    pdl_prologue(PDL)
    # One program rotates every query and key head of one token.
    token = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + token).to(tl.int64)
    offs_f = tl.arange(0, BLOCK_HALF)
    mask_f = offs_f < HALF
    cos = tl.load(cs_ptr + pos * stride_cs + offs_f, mask=mask_f, other=0.0)[None, :]
    sin = tl.load(cs_ptr + pos * stride_cs + HALF + offs_f, mask=mask_f, other=0.0)[None, :]

    # (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin), in fp32.
    offs_h = tl.arange(0, BLOCK_HQ)
    mask = (offs_h[:, None] < q_heads) & mask_f[None, :]
    src = q_ptr + token * stride_qt + offs_h[:, None] * stride_qh + offs_f[None, :]
    dst = q_out_ptr + token * stride_qot + offs_h[:, None] * stride_qoh + offs_f[None, :]
    x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + HALF, mask=mask, other=0.0).to(tl.float32)
    tl.store(dst, (x1 * cos - x2 * sin).to(q_out_ptr.dtype.element_ty), mask=mask)
    tl.store(dst + HALF, (x2 * cos + x1 * sin).to(q_out_ptr.dtype.element_ty), mask=mask)

    offs_h = tl.arange(0, BLOCK_HK)
    mask = (offs_h[:, None] < kv_heads) & mask_f[None, :]
    src = k_ptr + token * stride_kt + offs_h[:, None] * stride_kh + offs_f[None, :]
    dst = k_out_ptr + token * stride_kot + offs_h[:, None] * stride_koh + offs_f[None, :]
    x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + HALF, mask=mask, other=0.0).to(tl.float32)
    tl.store(dst, (x1 * cos - x2 * sin).to(k_out_ptr.dtype.element_ty), mask=mask)
    tl.store(dst + HALF, (x2 * cos + x1 * sin).to(k_out_ptr.dtype.element_ty), mask=mask)
    pdl_epilogue(PDL)


def _auto(op: str, backend: Backend, x: torch.Tensor) -> bool:
    if backend == "auto" and x.is_cuda and not TRITON_BY_DEFAULT[op]:
        return False
    return use_triton(backend, x)


def rmsnorm_ref(x, weight, *, eps=1e-5, residual=None):
    """Torch reference of `rmsnorm` / `add_rmsnorm` (fp32 math, fp64 for fp64 inputs)."""
    if residual is not None:
        x = x + residual
    cdt = torch.promote_types(x.dtype, torch.float32)
    xf = x.to(cdt)
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.to(cdt)
    return (y.to(x.dtype), x) if residual is not None else y.to(x.dtype)


def _rmsnorm(x, weight, eps, residual):
    hidden = x.shape[-1]
    if weight.shape != (hidden,) or x.stride(-1) != 1:
        raise ValueError(f"x {tuple(x.shape)} needs a contiguous last dim and weight [{hidden}]")
    x2 = x.reshape(-1, hidden)
    out = torch.empty_like(x2)
    res_in = x2 if residual is None else residual.reshape(-1, hidden)
    res_out = out if residual is None else torch.empty_like(x2)
    block = next_pow2(hidden)
    if x2.shape[0]:
        args = (x2, res_in, weight, out, res_out,
                x2.stride(0), res_in.stride(0), out.stride(0), res_out.stride(0), hidden, eps)
        constexprs = (("HAS_RESIDUAL", residual is not None), ("BLOCK", block),
                      ("num_warps", min(16, max(1, block // 512))))
        launch(_rmsnorm_kernel, (x2.shape[0],), args, constexprs,
               ("rmsnorm", constexprs, arg_key(args), interpreting()))
    if residual is None:
        return out.view(x.shape)
    return out.view(x.shape), res_out.view(x.shape)


def rmsnorm(
    x: torch.Tensor, weight: torch.Tensor, *, eps: float = 1e-5, backend: Backend = "auto"
) -> torch.Tensor:
    """RMSNorm over the last dim. x: [..., hidden]; weight: [hidden]. Returns x's shape."""
    if not _auto("rmsnorm", backend, x):
        return rmsnorm_ref(x, weight, eps=eps)
    return _rmsnorm(x, weight, eps, None)


def add_rmsnorm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
    *, eps: float = 1e-5, backend: Backend = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """h = x + residual; returns (rmsnorm(h) * weight, h). x, residual: [..., hidden]."""
    if x.shape != residual.shape:
        raise ValueError(f"x {tuple(x.shape)} and residual {tuple(residual.shape)} differ")
    if not _auto("rmsnorm", backend, x):
        return rmsnorm_ref(x, weight, eps=eps, residual=residual)
    return _rmsnorm(x, weight, eps, residual.contiguous())


def rope_cos_sin(
    max_positions: int, head_dim: int, *, theta: float = 10000.0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """fp32 table [max_positions, head_dim]: cos(p * f_i) then sin(p * f_i), i < head_dim/2,
    f_i = theta ** (-2i / head_dim); computed in fp64 so long positions stay exact."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.arange(max_positions, dtype=torch.float64)[:, None] * inv_freq[None, :]
    return torch.cat([angles.cos(), angles.sin()], dim=-1).to(torch.float32).to(device)


def rope_ref(q, k, positions, cos_sin):
    """Torch reference of `apply_rope` (fp32 math, fp64 for fp64 inputs)."""
    half = q.shape[-1] // 2
    table = cos_sin[positions.long()]  # [tokens, head_dim]

    def rotate(x):
        cdt = torch.promote_types(x.dtype, torch.float32)
        cos, sin = table[:, None, :half].to(cdt), table[:, None, half:].to(cdt)
        x1, x2 = x[..., :half].to(cdt), x[..., half:].to(cdt)
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)

    return rotate(q), rotate(k)


def apply_rope(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor,
    *, backend: Backend = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate queries and keys by their positions (rotate-half layout).

    Args:
        q: [tokens, q_heads, head_dim]; k: [tokens, kv_heads, head_dim]; head_dim even.
        positions: int [tokens]; cos_sin: fp32 [max_positions, head_dim] (`rope_cos_sin`).

    Returns:
        New (q, k) tensors, rotated.
    """
    tokens, q_heads, head_dim = q.shape
    if (head_dim % 2 or k.dim() != 3 or k.shape[0] != tokens or k.shape[2] != head_dim
            or cos_sin.shape[1] != head_dim):
        raise ValueError(f"bad shapes: q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"cos_sin {tuple(cos_sin.shape)}")
    if not _auto("rope", backend, q):
        return rope_ref(q, k, positions, cos_sin)
    if q.stride(-1) != 1 or k.stride(-1) != 1 or cos_sin.stride(-1) != 1:
        raise ValueError("head_dim must be the contiguous last dimension")
    q_out, k_out = torch.empty_like(q), torch.empty_like(k)
    half = head_dim // 2
    if tokens:
        args = (q, k, q_out, k_out, positions, cos_sin,
                q.stride(0), q.stride(1), k.stride(0), k.stride(1),
                q_out.stride(0), q_out.stride(1), k_out.stride(0), k_out.stride(1),
                cos_sin.stride(0), q_heads, k.shape[1])
        constexprs = (("HALF", half), ("BLOCK_HQ", next_pow2(q_heads)),
                      ("BLOCK_HK", next_pow2(k.shape[1])), ("BLOCK_HALF", next_pow2(half)),
                      ("num_warps", 4))
        launch(_rope_kernel, (tokens,), args, constexprs,
               ("rope", constexprs, arg_key(args), interpreting()))
    return q_out, k_out
