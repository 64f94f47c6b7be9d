"""A plain Llama/Mistral decoder on one device, built from a `ModelSpec`.

In the spirit of gpt-fast's ``model.py``: embedding lookup, pre-norm blocks of RMSNorm
-> grouped-query attention with RoPE -> RMSNorm -> SwiGLU (or GELU) MLP with residual
adds, a final RMSNorm and the LM head. Real operations throughout (seed 003
approximated the embedding, the norm and the softmax; none of that here).

The model knows nothing of parallelism except two things a `Part` tells it: how many
heads / MLP columns / vocabulary rows of each matrix it holds, and which layers. The
two row-parallel outputs (attention ``o_proj``, MLP ``down_proj``) and the LM head go
through a ``comm`` object: `LocalComm` (identity) on one device, the TP group's
all-reduce / all-gather (`twinfer.exec.tp.TPComm`) when sharded. Everything else about
sharding - which slice of which checkpoint tensor a rank holds - lives in
`twinfer.exec.tp`.

Kernels are reached only through `twinfer.exec.attention`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from twinfer.exec import attention
from twinfer.exec.attention import AttentionInput
from twinfer.spec import ModelSpec

TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class Part:
    """What one rank holds: a run of layers and its share of every matrix in them.

    ``heads`` / ``kv_heads`` / ``ffn`` / ``vocab_rows`` are the local sizes (the whole
    model's on one device). ``embed`` and ``head``: whether this rank holds the token
    embedding (first stage) and the final norm + LM head (last stage).
    """

    layers: range
    heads: int
    kv_heads: int
    ffn: int
    vocab_rows: int
    embed: bool
    head: bool

    @classmethod
    def whole(cls, spec: ModelSpec) -> Part:
        return cls(range(spec.layers), spec.heads, spec.kv_heads, spec.ffn_hidden,
                   spec.vocab, embed=True, head=True)


class Comm(Protocol):
    def reduce(self, x: torch.Tensor) -> torch.Tensor: ...
    def gather_vocab(self, logits: torch.Tensor) -> torch.Tensor: ...


class LocalComm:
    """One device: the identity where a sharded model communicates."""

    def reduce(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def gather_vocab(self, logits: torch.Tensor) -> torch.Tensor:
        return logits


class PageSource(Protocol):
    def pages(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]: ...


class Linear(nn.Module):
    """y = x W^T, no bias. The weight is created uninitialized: `Transformer.load`
    assigns it (nn.Linear's init would import torch's decomposition machinery on the
    meta device, seconds per rank for nothing)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return attention.linear(x, self.weight)


class Embedding(nn.Module):
    def __init__(self, vocab: int, hidden: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab, hidden))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


class Attention(nn.Module):
    def __init__(self, spec: ModelSpec, part: Part, comm: Comm) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = part.heads, part.kv_heads, spec.head_dim
        # Q, K and V in one GEMM: [hidden] -> [(heads + 2 * kv_heads) * head_dim]
        self.qkv_proj = Linear(spec.hidden, (part.heads + 2 * part.kv_heads) * spec.head_dim)
        self.o_proj = Linear(part.heads * spec.head_dim, spec.hidden)
        self.comm = comm

    def forward(self, x: torch.Tensor, step: AttentionInput, rope: torch.Tensor,
                pages: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        tokens, d = x.shape[0], self.head_dim
        q, k, v = self.qkv_proj(x).split(
            [self.heads * d, self.kv_heads * d, self.kv_heads * d], dim=-1)
        q, k = attention.rotate(q.view(tokens, self.heads, d), k.view(tokens, self.kv_heads, d),
                                step.positions, rope)
        v = v.view(tokens, self.kv_heads, d)
        attend = getattr(self.comm, "attend", None)  # a layout's own attention (kv_sharded)
        if pages is None:
            out = attention.causal(q, k, v, step)
        elif attend is not None:
            out = attend(q, k, v, step, pages)
        elif step.is_decode:
            out = attention.decode(q, k, v, step, pages)
        else:
            out = attention.prefill(q, k, v, step, pages)
        # row-parallel: each rank holds some heads' share of the output; sum them
        return self.comm.reduce(self.o_proj(out.reshape(tokens, self.heads * d)))


class MLP(nn.Module):
    def __init__(self, spec: ModelSpec, part: Part, comm: Comm) -> None:
        super().__init__()
        self.swiglu = spec.ffn_kind == "swiglu"
        # SwiGLU: gate and up in one GEMM, [hidden] -> [2 * ffn]
        self.up_proj = Linear(spec.hidden, (2 if self.swiglu else 1) * part.ffn)
        self.down_proj = Linear(part.ffn, spec.hidden)
        self.comm = comm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = self.up_proj(x)
        act = attention.silu_mul(up) if self.swiglu else F.gelu(up)
        return self.comm.reduce(self.down_proj(act))


class RMSNorm(nn.Module):
    def __init__(self, hidden: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(hidden))
        self.eps = eps


class Block(nn.Module):
    def __init__(self, spec: ModelSpec, part: Part, comm: Comm) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(spec.hidden, spec.norm_eps)
        self.self_attn = Attention(spec, part, comm)
        self.post_attention_layernorm = RMSNorm(spec.hidden, spec.norm_eps)
        self.mlp = MLP(spec, part, comm)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None, step: AttentionInput,
                rope: torch.Tensor, pages: tuple[torch.Tensor, torch.Tensor] | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [tokens, hidden], the previous block's output not yet added to ``residual``
        (the add is fused into the norm). Returns (output, residual) the same way."""
        norm = self.input_layernorm
        if residual is None:
            h, residual = attention.rms_norm(x, norm.weight, norm.eps), x
        else:
            h, residual = attention.add_rms_norm(x, residual, norm.weight, norm.eps)
        x = self.self_attn(h, step, rope, pages)
        norm = self.post_attention_layernorm
        h, residual = attention.add_rms_norm(x, residual, norm.weight, norm.eps)
        return self.mlp(h), residual


class Transformer(nn.Module):
    """The decoder, or the `Part` of it one rank holds.

    Parameters are created on the meta device; `load` assigns the real tensors (a
    rank's shards), so an 8B model is never materialized twice.
    """

    def __init__(self, spec: ModelSpec, part: Part | None = None, comm: Comm | None = None,
                 device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.spec, self.part = spec, part or Part.whole(spec)
        comm = comm or LocalComm()
        self.comm = comm
        with torch.device("meta"):
            if self.part.embed:
                self.embed_tokens = Embedding(spec.vocab, spec.hidden)
            # keyed by the global layer index, so stage 1's first block is "16", not "0"
            self.layers = nn.ModuleDict({str(i): Block(spec, self.part, comm)
                                         for i in self.part.layers})
            if self.part.head:
                self.norm = RMSNorm(spec.hidden, spec.norm_eps)
                self.lm_head = Linear(spec.hidden, self.part.vocab_rows)
        self.rope = attention.rope_table(spec.max_position, spec.head_dim, spec.rope_theta,
                                         torch.device(device))

    def load(self, state: dict[str, torch.Tensor]) -> Transformer:
        """Assign this part's tensors (names as in `state_dict()`); all must be present."""
        self.load_state_dict(state, strict=True, assign=True)
        return self

    def forward(self, x: torch.Tensor, step: AttentionInput, cache: PageSource | None = None,
                logits_rows: torch.Tensor | None = None) -> torch.Tensor:
        """Run this part's layers over the step's tokens.

        x: int64 token ids [tokens] on the first stage, else hidden states
        [tokens, hidden] from the previous stage. ``cache``: the KV pages (None: plain
        causal attention, no cache). Returns hidden [tokens, hidden] (the residual
        stream, to send to the next stage) or, on the last stage, fp32 logits
        [rows, vocab] for ``logits_rows`` (int64 indices into the tokens; default all).
        """
        h = self.embed_tokens(x) if self.part.embed else x
        residual = None
        for name, block in self.layers.items():
            pages = cache.pages(int(name)) if cache is not None else None
            h, residual = block(h, residual, step, self.rope, pages)
        if not self.part.head:
            return h if residual is None else h + residual
        if residual is None:
            h = attention.rms_norm(h, self.norm.weight, self.norm.eps)
        else:
            h, _ = attention.add_rms_norm(h, residual, self.norm.weight, self.norm.eps)
        if logits_rows is not None:
            h = h[logits_rows]
        # column-parallel head: gather every rank's vocabulary rows, drop the padding
        logits = self.comm.gather_vocab(self.lm_head(h))
        return logits[:, :self.spec.vocab].float()


def packed_input(lengths: list[int], device: torch.device | str = "cpu") -> AttentionInput:
    """Cache-free step input for prompts of ``lengths`` packed back to back."""
    positions = torch.cat([torch.arange(n) for n in lengths]).to(device)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return AttentionInput(positions=positions, cu_seqlens=cu.to(device),
                          max_seqlen=max(lengths))
