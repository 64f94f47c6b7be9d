"""SwiGLU's activation, fused: ``silu(gate) * up`` from the packed gate/up GEMM output.

The MLP's first GEMM writes gate and up side by side ([tokens, 2 * ffn], gate first).
Unfused, torch makes two passes and two launches (``F.silu`` then the multiply) and
an intermediate [tokens, ffn] tensor; this kernel reads each input byte once and
writes the product once. In fp32 and rounded once, like the reference below.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from twinfer.kernels.backend import (
    Backend,
    arg_key,
    cdiv,
    interpreting,
    launch,
    pdl_epilogue,
    pdl_prologue,
    use_triton,
)

BLOCK = 1024


@triton.jit
def _silu_mul_kernel(gate_up_ptr, out_ptr, ffn, stride_in, stride_out, BLOCK: tl.constexpr,
                     PDL: tl.constexpr):
    pdl_prologue(PDL)
    # program (row, column block): one token's ``BLOCK`` columns of gate and of up
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < ffn
    gate = tl.load(gate_up_ptr + row * stride_in + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(gate_up_ptr + row * stride_in + ffn + cols, mask=mask, other=0.0)
    y = gate / (1.0 + tl.exp(-gate)) * up.to(tl.float32)
    tl.store(out_ptr + row * stride_out + cols, y.to(out_ptr.dtype.element_ty), mask=mask)
    pdl_epilogue(PDL)


def silu_mul_ref(gate_up: torch.Tensor) -> torch.Tensor:
    """Torch reference: ``silu(gate) * up`` in fp32, rounded once."""
    gate, up = gate_up.float().chunk(2, dim=-1)
    return (F.silu(gate) * up).to(gate_up.dtype)


def silu_mul(gate_up: torch.Tensor, *, backend: Backend = "auto") -> torch.Tensor:
    """gate_up: [tokens, 2 * ffn], gate columns first -> [tokens, ffn]."""
    if gate_up.dim() != 2 or gate_up.shape[1] % 2 or gate_up.stride(-1) != 1:
        raise ValueError(f"gate_up {tuple(gate_up.shape)} must be [tokens, 2 * ffn] with a "
                         "contiguous last dim")
    if not use_triton(backend, gate_up):
        return silu_mul_ref(gate_up)
    tokens, ffn = gate_up.shape[0], gate_up.shape[1] // 2
    out = gate_up.new_empty(tokens, ffn)
    if tokens:
        args = (gate_up, out, ffn, gate_up.stride(0), out.stride(0))
        constexprs = (("BLOCK", BLOCK), ("num_warps", 4))
        launch(_silu_mul_kernel, (tokens, cdiv(ffn, BLOCK)), args, constexprs,
               ("silu_mul", arg_key(args), interpreting()))
    return out
