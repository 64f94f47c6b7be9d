"""Memory per GPU: weight shard, workspace, and what is left for the paged KV cache.

As in vLLM, a fraction ``scheduler.gpu_memory_utilization`` of each GPU's memory is
the budget; the weights of the GPU's shard and a workspace (the runtime's
reservation plus the activations of the largest step) come off it, and the rest
holds KV-cache blocks of ``scheduler.kv_block_tokens`` tokens. Every GPU of a
pipeline holds the KV of its own layers for every sequence of that pipeline, so a
pipeline's capacity in tokens is the minimum over its GPUs.

A layout that does not fit is a ``SpecError`` naming the GPU type and the sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

from twinfer.sim.profile import Profile
from twinfer.sim.shard import ShardShape
from twinfer.spec.cluster import ClusterSpec
from twinfer.spec.errors import SpecError
from twinfer.spec.layout import PipelinePlan, Placement, StagePlan
from twinfer.spec.model import ModelSpec
from twinfer.spec.workload import SchedulerSpec

GIB = float(1 << 30)
LOGIT_BYTES = 4  # logits are gathered and sampled in fp32


@dataclass(frozen=True)
class GpuMemory:
    """One GPU's memory budget, in bytes."""

    gpu: int
    gpu_type: str
    capacity_bytes: int
    usable_bytes: int  # capacity x gpu_memory_utilization
    weights_bytes: int
    workspace_bytes: int
    kv_capacity_bytes: int  # usable - weights - workspace
    kv_bytes_per_token: int  # this GPU's share of one token's K and V

    @property
    def kv_tokens(self) -> int:
        return self.kv_capacity_bytes // self.kv_bytes_per_token


@dataclass(frozen=True)
class PipelineMemory:
    gpus: tuple[GpuMemory, ...]
    kv_tokens: int  # tokens of KV the pipeline holds (its tightest GPU)
    kv_blocks: int


def stage_weight_bytes(model: ModelSpec, stage: StagePlan, first: bool, last: bool) -> int:
    """Bytes of weights on each GPU of ``stage``."""
    shard = ShardShape.of(model, stage.tp)
    params = stage.num_layers * shard.layer_params
    if first:
        params += shard.vocab * model.hidden  # vocabulary-parallel embedding
    if last:
        params += model.hidden  # final norm
        if not (model.tie_embeddings and first):
            params += shard.vocab * model.hidden  # LM head (a copy when tied across stages)
    return params * model.dtype_bytes


def activation_bytes_per_token(model: ModelSpec, tp: int) -> int:
    """Live activations per token of a step at its peak: residual, normed input, QKV,
    gate/up and the activated MLP input."""
    shard = ShardShape.of(model, tp)
    return (2 * model.hidden + shard.qkv_n + shard.up_n + shard.ffn) * model.dtype_bytes


def _workspace_bytes(model: ModelSpec, stage: StagePlan, last: bool, profile: Profile,
                     scheduler: SchedulerSpec) -> int:
    step_tokens = max(scheduler.max_prefill_tokens, scheduler.max_running)
    per_token = (profile.memory.activation_bytes_per_token
                 or activation_bytes_per_token(model, stage.tp))
    logits = scheduler.max_running * model.vocab * LOGIT_BYTES if last else 0
    return profile.memory.workspace_bytes + step_tokens * per_token + logits


def plan_pipeline(model: ModelSpec, pipeline: PipelinePlan, cluster: ClusterSpec,
                  profiles: dict[str, Profile], scheduler: SchedulerSpec) -> PipelineMemory:
    """Each GPU's budget and the pipeline's KV capacity; raises if a GPU overflows."""
    gpus = []
    last_index = len(pipeline.stages) - 1
    for i, stage in enumerate(pipeline.stages):
        first, last = i == 0, i == last_index
        weights = stage_weight_bytes(model, stage, first, last)
        kv_per_token = stage.num_layers * ShardShape.of(model, stage.tp).kv_bytes_per_token_layer
        for gpu in stage.gpus:
            gpu_type = cluster.gpu_type(gpu)
            profile = profiles[gpu_type]
            capacity = profile.device.memory_bytes
            usable = int(capacity * scheduler.gpu_memory_utilization)
            workspace = _workspace_bytes(model, stage, last, profile, scheduler)
            need = weights + workspace
            if need >= usable:
                raise SpecError(
                    "layout",
                    f"{model.name} with this layout needs {need / GIB:.1f} GiB per GPU "
                    f"(weights {weights / GIB:.1f} + workspace {workspace / GIB:.1f}) before "
                    f"any KV cache, but {gpu_type} has {usable / GIB:.1f} GiB usable "
                    f"({scheduler.gpu_memory_utilization:.0%} of {capacity / GIB:.1f})",
                    "use more tp/pp or a smaller model")
            gpus.append(GpuMemory(gpu, gpu_type, capacity, usable, weights, workspace,
                                  usable - need, kv_per_token))
    kv_tokens = min(g.kv_tokens for g in gpus)
    blocks = kv_tokens // scheduler.kv_block_tokens
    return PipelineMemory(tuple(gpus), blocks * scheduler.kv_block_tokens, blocks)


def plan_memory(model: ModelSpec, placement: Placement, cluster: ClusterSpec,
                profiles: dict[str, Profile], scheduler: SchedulerSpec,
                longest_request_tokens: int = 0) -> list[PipelineMemory]:
    """Memory of every pipeline. ``longest_request_tokens`` (prompt + output of the
    longest request) must fit one pipeline's KV cache, or no schedule can serve it."""
    plans = [plan_pipeline(model, p, cluster, profiles, scheduler) for p in placement.pipelines]
    block = scheduler.kv_block_tokens
    need = -(-longest_request_tokens // block) * block
    for plan in plans:
        if need > plan.kv_tokens:
            tight = min(plan.gpus, key=lambda g: g.kv_tokens)
            raise SpecError(
                "layout",
                f"the longest request needs {need} tokens of KV cache but a pipeline holds "
                f"{plan.kv_tokens} ({tight.kv_capacity_bytes / GIB:.2f} GiB left for KV on "
                f"{tight.gpu_type} GPU {tight.gpu})",
                "use more tp/pp, raise scheduler.gpu_memory_utilization, or shorten requests")
    return plans
