"""What the sweeps measure: the shapes the model presets produce under tensor parallelism.

A Llama-style layer sharded over ``tp`` GPUs runs these GEMMs per token batch of
``m`` rows (Megatron column/row-parallel split, as the executor does):

- QKV projection: [m, hidden] x [hidden, (q_dim + 2 kv_dim) / tp]
- attention output: [m, q_dim / tp] x [q_dim / tp, hidden]
- gate+up (SwiGLU, fused): [m, hidden] x [hidden, 2 ffn / tp]; GELU: ffn / tp
- down: [m, ffn / tp] x [ffn / tp, hidden]
- LM head: [m, hidden] x [hidden, vocab / tp]

Attention heads per GPU are ``heads / tp`` query heads and ``max(1, kv_heads / tp)``
KV heads (KV heads are replicated when tp > kv_heads). Pure Python: no torch here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from twinfer.spec import ModelSpec, model_preset

GPU_PRESETS = ("llama-3-8b", "mistral-7b", "llama-2-7b", "llama-3-70b", "llama-2-70b")
CPU_PRESETS = ("tiny", "tiny-gqa")
TP_DEGREES = (1, 2, 4, 8)


@dataclass(frozen=True, order=True)
class GemmShape:
    """A weight GEMM: ``n`` output features, ``k`` input features (m varies)."""

    n: int
    k: int


@dataclass(frozen=True, order=True)
class HeadShape:
    """Attention heads on one GPU."""

    q_heads: int
    kv_heads: int
    head_dim: int


def log_spaced(lo: int, hi: int, points: int) -> list[int]:
    """``points`` integers from ``lo`` to ``hi`` spaced evenly in log, deduplicated."""
    values = np.unique(np.rint(np.geomspace(lo, hi, points)).astype(int))
    return [int(v) for v in values]


def powers_of_two(lo: int, hi: int, step: int = 1) -> list[int]:
    """``lo, lo*2**step, ...`` up to ``hi`` inclusive (``lo`` a power of two)."""
    out, value = [], lo
    while value <= hi:
        out.append(value)
        value <<= step
    return out


def model_gemms(model: ModelSpec, tp: int) -> list[GemmShape]:
    """The distinct weight GEMMs of one layer plus the LM head, on one of ``tp`` GPUs."""
    kv_heads = max(1, model.kv_heads // tp)
    qkv_n = (model.q_dim // tp) + 2 * kv_heads * model.head_dim
    up_n = (2 if model.ffn_kind == "swiglu" else 1) * model.ffn_hidden // tp
    shapes = {
        GemmShape(qkv_n, model.hidden),
        GemmShape(model.hidden, model.q_dim // tp),
        GemmShape(up_n, model.hidden),
        GemmShape(model.hidden, model.ffn_hidden // tp),
        GemmShape(-(-model.vocab // tp), model.hidden),
    }
    return sorted(shapes)


def model_heads(model: ModelSpec, tp: int) -> HeadShape:
    return HeadShape(model.heads // tp, max(1, model.kv_heads // tp), model.head_dim)


def _valid_tp(model: ModelSpec, tp: int) -> bool:
    return model.heads % tp == 0 and model.ffn_hidden % tp == 0


def preset_work(presets: tuple[str, ...], tps: tuple[int, ...] = TP_DEGREES,
                ) -> list[GemmShape | HeadShape]:
    """GEMM shapes and head configurations in the order to measure them: preset by
    preset, TP degree by TP degree, each once. A time-boxed run then has everything
    the first preset needs (its GEMMs and its attention) before anything else."""
    work: dict[GemmShape | HeadShape, None] = {}
    for name in presets:
        model = model_preset(name)
        for tp in tps:
            if _valid_tp(model, tp):
                work.update(dict.fromkeys(model_gemms(model, tp)))
                work[model_heads(model, tp)] = None
    return list(work)
