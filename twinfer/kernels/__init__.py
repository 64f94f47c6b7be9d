"""Triton kernels for decode and prefill attention, the paged KV cache, LSE merging,
RMSNorm and RoPE, each with the torch reference it is tested against.

Every public op takes ``backend="auto" | "triton" | "torch"`` (see
`twinfer.kernels.backend`): "auto" runs Triton on CUDA tensors and the torch reference
on CPU tensors, unless ``TRITON_INTERPRET=1`` sends CPU tensors through Triton's
interpreter. This package imports no torch.distributed, MPI or scenario code.
"""

from twinfer.kernels.backend import BACKENDS, Backend, interpreting, use_triton
from twinfer.kernels.combine import lse_combine, lse_combine_ref
from twinfer.kernels.decode import (
    DecodeTiles,
    choose_num_splits,
    flash_decode,
    flash_decode_ref,
    gather_pages,
    paged_flash_decode,
    paged_flash_decode_ref,
)
from twinfer.kernels.gemv import GemvConfig, linear_ref, skinny_linear
from twinfer.kernels.norm_rope import (
    add_rmsnorm,
    apply_rope,
    rmsnorm,
    rmsnorm_ref,
    rope_cos_sin,
    rope_ref,
)
from twinfer.kernels.paged import paged_kv_append, paged_kv_append_ref
from twinfer.kernels.prefill import prefill_attention, prefill_attention_ref

__all__ = [
    "BACKENDS",
    "Backend",
    "DecodeTiles",
    "GemvConfig",
    "add_rmsnorm",
    "apply_rope",
    "choose_num_splits",
    "flash_decode",
    "flash_decode_ref",
    "gather_pages",
    "interpreting",
    "linear_ref",
    "lse_combine",
    "lse_combine_ref",
    "paged_flash_decode",
    "paged_flash_decode_ref",
    "paged_kv_append",
    "paged_kv_append_ref",
    "prefill_attention",
    "prefill_attention_ref",
    "rmsnorm",
    "rmsnorm_ref",
    "rope_cos_sin",
    "rope_ref",
    "skinny_linear",
    "use_triton",
]
