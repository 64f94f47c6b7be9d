"""Model description: a Llama/Mistral-style decoder, its presets and derived sizes.

The parameter count, weight bytes and KV bytes per token are derived from the
shape, never typed in. A model is a preset name, a preset with overrides, an
inline full description, or a Hugging Face ``config.json`` on disk.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

from twinfer.spec.errors import SpecError, pydantic_to_spec_error

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}

Dtype = Literal["bf16", "fp16", "fp32"]


class ModelSpec(BaseModel):
    """A decoder-only transformer: RMSNorm, RoPE, grouped-query attention, MLP."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "custom"
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int = 0  # 0 means hidden // heads
    ffn_hidden: int
    ffn_kind: Literal["swiglu", "gelu"] = "swiglu"
    vocab: int
    dtype: Dtype = "bf16"
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_embeddings: bool = False
    max_position: int = 131072
    note: str = ""

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        for field in ("layers", "hidden", "heads", "kv_heads", "ffn_hidden", "vocab"):
            if getattr(self, field) <= 0:
                raise ValueError(f"{field} must be a positive integer")
        if self.heads % self.kv_heads:
            raise ValueError(
                f"kv_heads={self.kv_heads} does not divide heads={self.heads}; "
                "grouped-query attention needs heads to be a multiple of kv_heads"
            )
        if self.head_dim == 0:
            if self.hidden % self.heads:
                raise ValueError(
                    f"hidden={self.hidden} is not a multiple of heads={self.heads}; "
                    "give head_dim explicitly"
                )
            object.__setattr__(self, "head_dim", self.hidden // self.heads)
        return self

    # ---- derived sizes -------------------------------------------------------------
    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def attn_params_per_layer(self) -> int:
        # Wq, Wk, Wv, Wo (no biases in Llama/Mistral)
        return self.hidden * (self.q_dim + 2 * self.kv_dim) + self.q_dim * self.hidden

    @property
    def mlp_params_per_layer(self) -> int:
        mats = 3 if self.ffn_kind == "swiglu" else 2
        return mats * self.hidden * self.ffn_hidden

    @property
    def params_per_layer(self) -> int:
        return self.attn_params_per_layer + self.mlp_params_per_layer + 2 * self.hidden

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def lm_head_params(self) -> int:
        return 0 if self.tie_embeddings else self.vocab * self.hidden

    @property
    def params(self) -> int:
        """Total parameter count, derived from the shape."""
        return (
            self.layers * self.params_per_layer
            + self.embedding_params
            + self.lm_head_params
            + self.hidden  # final norm
        )

    @property
    def weight_bytes(self) -> int:
        return self.params * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V for one token over all layers."""
        return 2 * self.layers * self.kv_dim * self.dtype_bytes

    def describe(self) -> str:
        return (
            f"{self.name}: {self.layers} layers, hidden {self.hidden}, "
            f"{self.heads}/{self.kv_heads} heads x {self.head_dim}, ffn {self.ffn_hidden} "
            f"({self.ffn_kind}), vocab {self.vocab}, {self.params / 1e9:.2f}B params"
        )


_PRESETS: dict[str, dict] = {
    "llama-3-8b": dict(
        layers=32, hidden=4096, heads=32, kv_heads=8, ffn_hidden=14336, vocab=128256,
        rope_theta=500000.0, max_position=8192,
    ),
    "llama-3-70b": dict(
        layers=80, hidden=8192, heads=64, kv_heads=8, ffn_hidden=28672, vocab=128256,
        rope_theta=500000.0, max_position=8192,
    ),
    "llama-2-7b": dict(
        layers=32, hidden=4096, heads=32, kv_heads=32, ffn_hidden=11008, vocab=32000,
        max_position=4096,
    ),
    "llama-2-70b": dict(
        layers=80, hidden=8192, heads=64, kv_heads=8, ffn_hidden=28672, vocab=32000,
        max_position=4096,
    ),
    "mistral-7b": dict(
        layers=32, hidden=4096, heads=32, kv_heads=8, ffn_hidden=14336, vocab=32000,
        rope_theta=1000000.0, max_position=32768,
    ),
    # The FA Pool paper's "4-layer dense model, hidden 4096, 32 heads, FFN 16384".
    # Derived: 1.07B parameters with a 32K vocabulary, not the ~13B the paper states.
    "fa-pool-dense": dict(
        layers=4, hidden=4096, heads=32, kv_heads=32, ffn_hidden=16384, ffn_kind="gelu",
        vocab=32000, note="FA Pool paper's model; the paper's ~13B figure is inconsistent "
        "with its shape (twinfer derives the count)",
    ),
    "tiny": dict(
        layers=2, hidden=64, heads=4, kv_heads=2, ffn_hidden=128, vocab=256,
        max_position=2048, dtype="fp32",
    ),
    "tiny-gqa": dict(
        layers=4, hidden=128, heads=8, kv_heads=2, ffn_hidden=256, vocab=512,
        max_position=4096, dtype="fp32",
    ),
}


def preset_names() -> list[str]:
    return sorted(_PRESETS)


def model_preset(name: str, **overrides: object) -> ModelSpec:
    """A named preset, optionally with some fields replaced (a new object)."""
    if name not in _PRESETS:
        raise SpecError("model.preset", f"unknown preset {name!r}",
                        f"use one of {', '.join(preset_names())}")
    fields = {"name": name, **_PRESETS[name], **overrides}
    try:
        return ModelSpec(**fields)
    except Exception as exc:  # pydantic.ValidationError
        raise pydantic_to_spec_error(exc, "model") from None


def model_from_hf_config(path: str | Path, name: str | None = None) -> ModelSpec:
    """Read a Hugging Face Llama/Mistral ``config.json`` from disk."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise SpecError("model.hf_config", f"{path} does not exist",
                        "give the path of a Hugging Face config.json") from None
    except json.JSONDecodeError as exc:
        raise SpecError("model.hf_config", f"{path} is not valid JSON ({exc.msg})",
                        "give a Hugging Face config.json") from None
    needed = ["num_hidden_layers", "hidden_size", "num_attention_heads",
              "intermediate_size", "vocab_size"]
    missing = [k for k in needed if k not in cfg]
    if missing:
        raise SpecError("model.hf_config", f"{path} lacks {', '.join(missing)}",
                        "only Llama/Mistral-style configs are supported")
    act = cfg.get("hidden_act", "silu")
    torch_dtype = str(cfg.get("torch_dtype", cfg.get("dtype", "bfloat16")))
    dtype = {"float16": "fp16", "float32": "fp32"}.get(torch_dtype, "bf16")
    heads = cfg["num_attention_heads"]
    fields = dict(
        name=name or cfg.get("_name_or_path") or path.parent.name or "hf-model",
        layers=cfg["num_hidden_layers"],
        hidden=cfg["hidden_size"],
        heads=heads,
        kv_heads=cfg.get("num_key_value_heads", heads),
        head_dim=cfg.get("head_dim") or 0,
        ffn_hidden=cfg["intermediate_size"],
        ffn_kind="swiglu" if act in ("silu", "swish") else "gelu",
        vocab=cfg["vocab_size"],
        dtype=dtype,
        norm_eps=cfg.get("rms_norm_eps", 1e-5),
        # transformers >= 5 writes it under rope_parameters
        rope_theta=cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get(
            "rope_theta", 10000.0),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        max_position=cfg.get("max_position_embeddings", 131072),
    )
    try:
        return ModelSpec(**fields)
    except Exception as exc:
        raise pydantic_to_spec_error(exc, "model") from None


def resolve_model(value: object, base_dir: Path | None = None) -> ModelSpec:
    """A scenario's ``model:`` entry: a preset name, ``{preset: ..., <overrides>}``,
    ``{hf_config: path}``, or a full inline description."""
    if isinstance(value, ModelSpec):
        return value
    if isinstance(value, str):
        return model_preset(value)
    if not isinstance(value, dict):
        raise SpecError("model", f"expected a preset name or a mapping, got {value!r}",
                        f"e.g. model: llama-3-8b (presets: {', '.join(preset_names())})")
    value = dict(value)
    if "preset" in value:
        name = value.pop("preset")
        return model_preset(str(name), **value)
    if "hf_config" in value:
        cfg_path = Path(str(value.pop("hf_config")))
        if base_dir is not None and not cfg_path.is_absolute():
            cfg_path = base_dir / cfg_path
        model = model_from_hf_config(cfg_path, value.pop("name", None))
        if value:
            try:
                return ModelSpec(**{**model.model_dump(), **value})
            except Exception as exc:
                raise pydantic_to_spec_error(exc, "model") from None
        return model
    try:
        return ModelSpec(**value)
    except Exception as exc:
        raise pydantic_to_spec_error(exc, "model") from None
