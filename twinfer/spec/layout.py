"""Parallel layouts and their placement on GPUs.

Four kinds (see ../shared/DESIGN.md):

- ``uniform``: tensor parallel ``tp`` x pipeline parallel ``pp`` x ``replicas``.
- ``hetero`` (HexGen, Jiang et al. 2024): pipelines of stages; a stage is a TP group
  of any size and GPU type owning a contiguous run of layers; its first GPU is the
  stage leader that receives activations and broadcasts them inside the group.
- ``fa_pool`` (FA Pool): a base ``uniform`` layout for embeddings, projections, FFN
  and LM head, plus a pool of GPUs that join attention for sequences longer than
  ``threshold_tokens``; attention over n tokens is split block-wise over p pool
  GPUs, b = ceil(n / p) tokens each, merged by log-sum-exp.
- ``kv_sharded`` (distributed flash decode): weights sharded by TP as usual, but each
  sequence's KV cache split along the sequence over the group; partial attention +
  LSE on every rank, then all-gather and combine.

``placement(layout, model, cluster)`` turns any of them into the one structure both
the twin and the executor build from: pipelines of stages, each stage a list of
global GPU ids and a layer range.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from twinfer.spec.cluster import ClusterSpec
from twinfer.spec.errors import SpecError
from twinfer.spec.model import ModelSpec


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UniformLayout(_Frozen):
    kind: Literal["uniform"] = "uniform"
    tp: int = Field(1, ge=1)
    pp: int = Field(1, ge=1)
    replicas: int = Field(1, ge=1)
    micro_batches: int = Field(0, ge=0, description="0: as many as pipeline stages")
    gpus: list[int] | None = Field(None, description="global GPU ids; default the first ones")

    @property
    def num_gpus(self) -> int:
        return self.tp * self.pp * self.replicas


class StageSpec(_Frozen):
    gpus: list[int] = Field(min_length=1, description="the stage's TP group; gpus[0] leads")
    layers: int = Field(ge=1)


class PipelineSpec(_Frozen):
    stages: list[StageSpec] = Field(min_length=1)
    micro_batches: int = Field(0, ge=0)


class HeteroLayout(_Frozen):
    kind: Literal["hetero"] = "hetero"
    pipelines: list[PipelineSpec] = Field(min_length=1)

    @property
    def num_gpus(self) -> int:
        return sum(len(s.gpus) for p in self.pipelines for s in p.stages)


class FaPoolLayout(_Frozen):
    kind: Literal["fa_pool"] = "fa_pool"
    base: UniformLayout
    pool_gpus: list[int] = Field(min_length=1, description="global ids of the pool GPUs")
    threshold_tokens: int = Field(4096, ge=1)
    policy: Literal["all", "per_threshold"] = Field(
        "per_threshold",
        description="all: every pool GPU joins above the threshold; per_threshold: "
        "p = min(pool size, ceil(n / threshold_tokens)) GPUs",
    )

    @property
    def num_gpus(self) -> int:
        return self.base.num_gpus + len(self.pool_gpus)

    def pool_size_for(self, context_tokens: int) -> int:
        """How many pool GPUs a sequence of ``context_tokens`` uses (0: none)."""
        if context_tokens <= self.threshold_tokens:
            return 0
        if self.policy == "all":
            return len(self.pool_gpus)
        return min(len(self.pool_gpus), ceil(context_tokens / self.threshold_tokens))

    @staticmethod
    def block_tokens(context_tokens: int, pool_size: int) -> int:
        """b = ceil(n / p): the KV tokens each pool GPU attends over."""
        return ceil(context_tokens / max(pool_size, 1))


class KvShardedLayout(_Frozen):
    kind: Literal["kv_sharded"] = "kv_sharded"
    tp: int = Field(2, ge=1, description="GPUs per group; each holds 1/tp of every sequence")
    replicas: int = Field(1, ge=1)
    comm: Literal["allgather", "mpi", "fused"] = "allgather"
    gpus: list[int] | None = None

    @property
    def num_gpus(self) -> int:
        return self.tp * self.replicas


LayoutSpec = Annotated[
    Union[UniformLayout, HeteroLayout, FaPoolLayout, KvShardedLayout],
    Field(discriminator="kind"),
]

LAYOUT_KINDS = ("uniform", "hetero", "fa_pool", "kv_sharded")


# ---- placement ------------------------------------------------------------------------
@dataclass(frozen=True)
class StagePlan:
    """One pipeline stage: its TP group (``gpus[0]`` is the leader) and its layers."""

    gpus: tuple[int, ...]
    first_layer: int
    num_layers: int

    @property
    def tp(self) -> int:
        return len(self.gpus)

    @property
    def leader(self) -> int:
        return self.gpus[0]

    @property
    def layers(self) -> range:
        return range(self.first_layer, self.first_layer + self.num_layers)


@dataclass(frozen=True)
class PipelinePlan:
    stages: tuple[StagePlan, ...]
    micro_batches: int

    @property
    def gpus(self) -> tuple[int, ...]:
        return tuple(g for s in self.stages for g in s.gpus)


@dataclass(frozen=True)
class Placement:
    """Where every part of the model runs. ``pool`` is the FA Pool's GPUs (else empty)."""

    pipelines: tuple[PipelinePlan, ...]
    pool: tuple[int, ...] = ()

    @property
    def gpus(self) -> tuple[int, ...]:
        return tuple(g for p in self.pipelines for g in p.gpus) + self.pool


def split_layers(layers: int, parts: int) -> list[int]:
    """Layers per stage as even as possible, earlier stages taking the remainder."""
    base, rem = divmod(layers, parts)
    return [base + (1 if i < rem else 0) for i in range(parts)]


def _uniform_pipelines(tp: int, pp: int, replicas: int, micro_batches: int,
                       gpus: list[int], layers: int) -> tuple[PipelinePlan, ...]:
    counts = split_layers(layers, pp)
    pipelines = []
    for r in range(replicas):
        stages, first = [], 0
        for s in range(pp):
            start = (r * pp + s) * tp
            stages.append(StagePlan(tuple(gpus[start:start + tp]), first, counts[s]))
            first += counts[s]
        pipelines.append(PipelinePlan(tuple(stages), micro_batches or pp))
    return tuple(pipelines)


def check_tp(tp: int, model: ModelSpec, field: str) -> None:
    """TP must divide the query heads; KV heads are split, or replicated when tp > kv_heads."""
    if model.heads % tp:
        ok = [d for d in range(1, model.heads + 1) if model.heads % d == 0]
        raise SpecError(field, f"tp={tp} does not divide the model's {model.heads} query heads",
                        f"choose tp in {ok}")
    if tp <= model.kv_heads and model.kv_heads % tp:
        raise SpecError(field, f"tp={tp} does not divide the model's {model.kv_heads} KV heads",
                        "choose a tp that divides kv_heads, or a multiple of it")
    if tp > model.kv_heads and tp % model.kv_heads:
        raise SpecError(field, f"tp={tp} is not a multiple of the model's {model.kv_heads} "
                        "KV heads (needed to replicate them)", "choose another tp")
    if model.ffn_hidden % tp:
        raise SpecError(field, f"tp={tp} does not divide the model's ffn_hidden="
                        f"{model.ffn_hidden} (the MLP is split column/row-wise)",
                        "choose a tp that divides ffn_hidden")


def placement(layout: object, model: ModelSpec, cluster: ClusterSpec) -> Placement:
    """Validate a layout against the model and cluster and place it on GPU ids."""
    n_cluster = cluster.num_gpus

    def check_ids(ids: list[int], field: str) -> None:
        bad = [g for g in ids if not 0 <= g < n_cluster]
        if bad:
            raise SpecError(field, f"GPU id {bad[0]} does not exist (the cluster has "
                            f"{n_cluster} GPUs, ids 0..{n_cluster - 1})",
                            "use ids of the cluster's GPUs or add nodes")
        seen: set[int] = set()
        for g in ids:
            if g in seen:
                raise SpecError(field, f"GPU {g} is named twice", "give each GPU one role")
            seen.add(g)

    if isinstance(layout, UniformLayout):
        check_tp(layout.tp, model, "layout.tp")
        if layout.pp > model.layers:
            raise SpecError("layout.pp", f"pp={layout.pp} exceeds the model's {model.layers} "
                            "layers", f"use pp <= {model.layers}")
        gpus = layout.gpus if layout.gpus is not None else list(range(layout.num_gpus))
        if layout.gpus is None and layout.num_gpus > n_cluster:
            raise SpecError("layout", f"tp*pp*replicas = {layout.num_gpus} GPUs but the "
                            f"cluster has {n_cluster}", "add GPUs or shrink the layout")
        if len(gpus) != layout.num_gpus:
            raise SpecError("layout.gpus", f"lists {len(gpus)} GPUs but tp*pp*replicas = "
                            f"{layout.num_gpus}", "list exactly that many ids")
        check_ids(gpus, "layout.gpus")
        return Placement(_uniform_pipelines(layout.tp, layout.pp, layout.replicas,
                                            layout.micro_batches, gpus, model.layers))

    if isinstance(layout, HeteroLayout):
        pipelines = []
        all_ids: list[int] = []
        for i, pipe in enumerate(layout.pipelines):
            total = sum(s.layers for s in pipe.stages)
            if total != model.layers:
                raise SpecError(f"layout.pipelines.{i}.stages",
                                f"stages hold {total} layers but the model has {model.layers}",
                                "make the stages' layers add up to the model's")
            stages, first = [], 0
            for j, stage in enumerate(pipe.stages):
                check_tp(len(stage.gpus), model, f"layout.pipelines.{i}.stages.{j}.gpus")
                stages.append(StagePlan(tuple(stage.gpus), first, stage.layers))
                first += stage.layers
                all_ids += stage.gpus
            pipelines.append(PipelinePlan(tuple(stages), pipe.micro_batches or len(stages)))
        check_ids(all_ids, "layout.pipelines")
        return Placement(tuple(pipelines))

    if isinstance(layout, FaPoolLayout):
        base = placement(layout.base, model, cluster)
        ids = list(base.gpus) + list(layout.pool_gpus)
        check_ids(ids, "layout.pool_gpus")
        return Placement(base.pipelines, tuple(layout.pool_gpus))

    if isinstance(layout, KvShardedLayout):
        check_tp(layout.tp, model, "layout.tp")
        gpus = layout.gpus if layout.gpus is not None else list(range(layout.num_gpus))
        if layout.gpus is None and layout.num_gpus > n_cluster:
            raise SpecError("layout", f"tp*replicas = {layout.num_gpus} GPUs but the cluster "
                            f"has {n_cluster}", "add GPUs or shrink the layout")
        if len(gpus) != layout.num_gpus:
            raise SpecError("layout.gpus", f"lists {len(gpus)} GPUs but tp*replicas = "
                            f"{layout.num_gpus}", "list exactly that many ids")
        check_ids(gpus, "layout.gpus")
        return Placement(_uniform_pipelines(layout.tp, 1, layout.replicas, 1, gpus,
                                            model.layers))

    raise SpecError("layout.kind", f"unsupported layout {layout!r}",
                    f"use one of {', '.join(LAYOUT_KINDS)}")
