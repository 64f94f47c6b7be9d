"""Where a model's full tensors come from: a seed, or a local safetensors checkpoint.

Both sources speak Hugging Face Llama names (``model.layers.3.self_attn.q_proj.weight``)
and hand out any rectangular slice of a full tensor, so that a rank reads only its
shard (`twinfer.exec.tp` decides which) and the single-process reference reads the
whole: both see the same full weights by construction.

- `SeededWeights`: each tensor is drawn from its own generator, seeded from the run's
  seed and the tensor's name, then sliced. The same seed gives the same full tensor
  on every rank and in the reference, whatever the layout (per device type: CPU and
  CUDA generators differ).
- `CheckpointWeights`: ``*.safetensors`` files in a directory (one file or an HF
  sharded set), read lazily with ``get_slice``; `check` compares every tensor's shape
  with the `ModelSpec` and raises a `SpecError` naming the tensor.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Protocol

import torch

from twinfer.spec import ModelSpec, SpecError

# Random weights: N(0, 0.02) like HF's initializer_range; norm weights near 1 but not 1,
# so that a norm applied with the wrong weights (or twice) changes the logits.
INIT_STD = 0.02
NORM_JITTER = 0.1

Index = tuple[slice, ...]


def full_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Every tensor of the model by its Hugging Face name, with its full shape."""
    h, d = spec.hidden, spec.head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (spec.vocab, h)}
    for i in range(spec.layers):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (h,)
        shapes[p + "self_attn.q_proj.weight"] = (spec.heads * d, h)
        shapes[p + "self_attn.k_proj.weight"] = (spec.kv_heads * d, h)
        shapes[p + "self_attn.v_proj.weight"] = (spec.kv_heads * d, h)
        shapes[p + "self_attn.o_proj.weight"] = (h, spec.heads * d)
        shapes[p + "post_attention_layernorm.weight"] = (h,)
        if spec.ffn_kind == "swiglu":
            shapes[p + "mlp.gate_proj.weight"] = (spec.ffn_hidden, h)
        shapes[p + "mlp.up_proj.weight"] = (spec.ffn_hidden, h)
        shapes[p + "mlp.down_proj.weight"] = (h, spec.ffn_hidden)
    shapes["model.norm.weight"] = (h,)
    if not spec.tie_embeddings:
        shapes["lm_head.weight"] = (spec.vocab, h)
    return shapes


def source_name(spec: ModelSpec, name: str) -> str:
    """The stored tensor behind ``name`` (a tied LM head reads the embedding)."""
    if name == "lm_head.weight" and spec.tie_embeddings:
        return "model.embed_tokens.weight"
    return name


class WeightSource(Protocol):
    def read(self, name: str, index: Index = ()) -> torch.Tensor:
        """``full_tensor(name)[index]`` on the source's device and dtype."""
        ...


class SeededWeights:
    """Deterministic random weights: the tensor ``name`` depends only on (seed, name)."""

    def __init__(self, spec: ModelSpec, seed: int, device: torch.device,
                 dtype: torch.dtype) -> None:
        self.spec, self.seed, self.device, self.dtype = spec, seed, device, dtype
        self.shapes = full_shapes(spec)

    def read(self, name: str, index: Index = ()) -> torch.Tensor:
        name = source_name(self.spec, name)
        shape = self.shapes[name]
        gen = torch.Generator(device=self.device)
        gen.manual_seed((self.seed * 1_000_003 + zlib.crc32(name.encode())) % (1 << 63))
        full = torch.randn(shape, generator=gen, device=self.device, dtype=self.dtype)
        is_norm = len(shape) == 1
        full = full.mul_(NORM_JITTER).add_(1.0) if is_norm else full.mul_(INIT_STD)
        # clone so that the full tensor is freed once the slice is taken
        return full[index].clone() if index else full


class CheckpointWeights:
    """Tensors of a local Hugging Face safetensors checkpoint (a directory or a file)."""

    def __init__(self, path: str | Path, spec: ModelSpec, device: torch.device,
                 dtype: torch.dtype) -> None:
        from safetensors import safe_open

        root = Path(path)
        files = sorted(root.glob("*.safetensors")) if root.is_dir() else [root]
        if not files or not all(f.exists() for f in files):
            raise SpecError("checkpoint", f"no *.safetensors file at {root}",
                            "give a directory holding a Hugging Face safetensors checkpoint")
        self.spec, self.device, self.dtype = spec, device, dtype
        self._handles = [safe_open(str(f), framework="pt", device="cpu") for f in files]
        self._where = {key: h for h in self._handles for key in h.keys()}  # noqa: SIM118
        self.check()

    def check(self) -> None:
        """Every tensor the spec needs exists with the spec's shape, else a SpecError."""
        for name, shape in full_shapes(self.spec).items():
            if name not in self._where:
                raise SpecError("checkpoint", f"tensor {name} is missing",
                                "the checkpoint is not a Llama/Mistral model matching "
                                "the scenario's model:")
            found = tuple(self._where[name].get_slice(name).get_shape())
            if found != shape:
                raise SpecError("checkpoint", f"tensor {name} has shape {list(found)} but the "
                                f"model spec needs {list(shape)}",
                                "make the scenario's model: match the checkpoint "
                                "(e.g. model: {hf_config: <checkpoint dir>})")

    def read(self, name: str, index: Index = ()) -> torch.Tensor:
        name = source_name(self.spec, name)
        part = self._where[name].get_slice(name)
        tensor = part[index] if index else part[:]
        return tensor.to(device=self.device, dtype=self.dtype)
