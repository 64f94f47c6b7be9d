"""What one GPU of a tensor-parallel group holds and computes (Megatron-style sharding).

Column-parallel: QKV and gate/up projections split their output features; row-
parallel: the attention output and down projections split their input features and
all-reduce the result. Query heads split evenly; KV heads split too, or are
replicated (one per GPU) when tp exceeds them. The embedding and LM head are
vocabulary-parallel. These are the shapes calibration sweeps
(``twinfer.calibration.shapes``) and the executor shards.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil

from twinfer.spec.model import ModelSpec


@dataclass(frozen=True)
class ShardShape:
    """A model's per-GPU shapes under tensor parallelism ``tp``."""

    hidden: int
    q_heads: int  # query heads on this GPU
    kv_heads: int  # KV heads on this GPU (replicated when tp > model kv_heads)
    head_dim: int
    ffn: int  # MLP intermediate features on this GPU
    up_n: int  # gate+up (SwiGLU, fused) or up (GELU) output features
    vocab: int  # vocabulary rows on this GPU
    swiglu: bool
    dtype_bytes: int

    @classmethod
    def of(cls, model: ModelSpec, tp: int) -> ShardShape:
        ffn = ceil(model.ffn_hidden / tp)
        swiglu = model.ffn_kind == "swiglu"
        return cls(hidden=model.hidden, q_heads=model.heads // tp,
                   kv_heads=max(1, model.kv_heads // tp), head_dim=model.head_dim,
                   ffn=ffn, up_n=(2 if swiglu else 1) * ffn, vocab=ceil(model.vocab / tp),
                   swiglu=swiglu, dtype_bytes=model.dtype_bytes)

    @property
    def q_dim(self) -> int:
        return self.q_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def qkv_n(self) -> int:
        return self.q_dim + 2 * self.kv_dim

    @property
    def layer_params(self) -> int:
        """Weights of one decoder layer on this GPU (norms replicated)."""
        attn = self.hidden * self.qkv_n + self.q_dim * self.hidden
        mlp = self.hidden * self.up_n + self.ffn * self.hidden
        return attn + mlp + 2 * self.hidden

    @property
    def kv_bytes_per_token_layer(self) -> int:
        """K and V of one token in one layer on this GPU."""
        return 2 * self.kv_dim * self.dtype_bytes
