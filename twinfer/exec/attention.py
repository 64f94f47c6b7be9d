"""The executor's one door to `twinfer.kernels`: the decode GEMM, norms, RoPE, the SwiGLU
activation, prefill and decode attention.

Every kernel call of the model goes through this module, so that a renamed kernel or
a changed signature is one edit here. Each op runs with ``backend="auto"``: the Triton
kernel on CUDA tensors, the kernels package's torch reference on CPU tensors (that is
what the CPU correctness tests execute).

Attention comes in three forms:

- `prefill`: causal attention of packed prompts, writing their K/V into the pages;
- `decode`: one new token per sequence, appended to the pages, then split-KV paged
  flash decode over the sequence's whole context;
- `causal`: packed causal attention with no cache at all (the single-process
  reference forward and the workspace probe use it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from twinfer import kernels
from twinfer.kernels.activation import silu_mul as silu_mul_kernel
from twinfer.kernels.gemv import linear as gemv_linear


@dataclass
class AttentionInput:
    """Where the tokens of one step sit, as device tensors (built per step by the engine).

    Prefill packs prompts back to back: ``cu_seqlens`` int32 [n + 1] bounds them and
    ``max_seqlen`` is the longest. Decode has one token per sequence: ``block_table``
    int32 [batch, max_blocks] and ``seq_lens`` int32 [batch] (new token included).
    ``slots`` int64 [tokens] is where each new token's K/V goes (-1: padding, skip).
    """

    positions: torch.Tensor  # int64 [tokens]
    slots: torch.Tensor | None = None  # int64 [tokens]
    cu_seqlens: torch.Tensor | None = None  # int32 [n + 1]
    max_seqlen: int = 0
    block_table: torch.Tensor | None = None  # int32 [batch, max_blocks]
    seq_lens: torch.Tensor | None = None  # int32 [batch]

    @property
    def is_decode(self) -> bool:
        return self.block_table is not None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x: [tokens, hidden] -> [tokens, hidden]."""
    return kernels.rmsnorm(x, weight, eps=eps)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """h = x + residual; returns (rmsnorm(h), h), both [tokens, hidden]."""
    return kernels.add_rmsnorm(x, residual, weight, eps=eps)


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [m, K] @ weight [N, K]^T: the skinny decode kernel where this GPU's measured
    table says it beats cuBLAS (m <= 16), else ``F.linear``."""
    return gemv_linear(x, weight)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """SwiGLU's activation: [tokens, 2 * ffn] (gate, then up) -> silu(gate) * up."""
    return silu_mul_kernel(gate_up)


def rope_table(max_positions: int, head_dim: int, theta: float,
               device: torch.device) -> torch.Tensor:
    """fp32 [max_positions, head_dim]: cos then sin (rotate-half layout, as HF Llama)."""
    return kernels.rope_cos_sin(max_positions, head_dim, theta=theta, device=device)


def rotate(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
           table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q: [tokens, heads, head_dim], k: [tokens, kv_heads, head_dim], rotated copies."""
    return kernels.apply_rope(q, k, positions, table)


def causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
           step: AttentionInput) -> torch.Tensor:
    """Packed causal attention, no cache. q: [tokens, heads, D]; k, v: [tokens, kv, D]."""
    out, _ = kernels.prefill_attention(q, k, v, step.cu_seqlens, max_seqlen=step.max_seqlen)
    return out


def prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, step: AttentionInput,
            pages: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Packed causal attention of fresh prompts; their K/V are written to ``pages``
    ([num_blocks, page_size, kv_heads, D] each) at ``step.slots``."""
    out, _ = kernels.prefill_attention(q, k, v, step.cu_seqlens, max_seqlen=step.max_seqlen,
                                       k_pages=pages[0], v_pages=pages[1],
                                       slot_mapping=step.slots)
    return out


def decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, step: AttentionInput,
           pages: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """One token per sequence: append its K/V, then attend over the whole context.

    q: [batch, heads, D]; k, v: [batch, kv_heads, D]. Padded rows have slot -1 and
    seq_len 0 (a zero output that nobody reads). Shapes depend only on the batch and
    the block-table width, so the call can be captured in a CUDA graph.
    """
    kernels.paged_kv_append(pages[0], pages[1], k, v, step.slots)
    out, _ = kernels.paged_flash_decode(q, pages[0], pages[1], step.block_table, step.seq_lens)
    return out
