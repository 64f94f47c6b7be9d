"""Twins of the layouts that are more than plain pipelines: `kv_sharded` and `fa_pool`.

Both start from the twin of an equivalent pipeline layout (``build_twin``) and swap
in their own stage costs:

- `kv_sharded`: the TP group's pipeline (tp x replicas, one stage), with
  ``KvShardedStageCost`` (attention over 1/tp of each sequence + the exchange
  variant's cost, ``twinfer.sim.kv_sharded``);
- `fa_pool`: the base layout's pipelines with ``FaPoolStageCost`` (long sequences'
  attention on the pool, ``twinfer.sim.fa_pool``), the pool GPUs' memory planned
  and added to the KV capacity, and an engine in which the pool GPUs are a shared
  ``simpy.Container`` that steps take their pool GPUs from (``PoolEngine``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import simpy

from twinfer.sim.cost import CostModel
from twinfer.sim.engine import Engine
from twinfer.sim.fa_pool import (
    FaPoolStageCost,
    PoolSpec,
    check_pool_fits,
    pool_kv_blocks,
    pool_memory,
)
from twinfer.sim.kv_sharded import KvShardedStageCost
from twinfer.sim.memory import GpuMemory
from twinfer.sim.results import GpuReport, SimResult
from twinfer.sim.stage import StepBatch
from twinfer.sim.twin import ProfilesArg, Twin, build_twin
from twinfer.spec.errors import SpecError
from twinfer.spec.layout import FaPoolLayout, KvShardedLayout, UniformLayout
from twinfer.spec.scenario import Scenario
from twinfer.spec.workload import Request


@dataclass
class PoolTwin(Twin):
    """An FA Pool twin: the base pipelines' twin plus the pool."""

    pool: PoolSpec | None = None
    pool_memory: list[GpuMemory] = field(default_factory=list)


def build_layout_twin(scenario: Scenario, profiles: ProfilesArg = None,
                      requests: list[Request] | None = None) -> Twin:
    """The twin of a `kv_sharded` or `fa_pool` scenario."""
    layout = scenario.layout
    if isinstance(layout, KvShardedLayout):
        return _kv_sharded_twin(scenario, layout, profiles, requests)
    if isinstance(layout, FaPoolLayout):
        return _fa_pool_twin(scenario, layout, profiles, requests)
    raise SpecError("layout.kind", f"{layout.kind} is not a layout of this module",
                    "use build_twin")


def _base_twin(scenario: Scenario, base: object, profiles: ProfilesArg,
               requests: list[Request] | None) -> Twin:
    try:
        return build_twin(scenario.with_layout(base), profiles, requests)
    except SpecError as exc:
        raise SpecError(exc.field.replace("layout", "layout.base", 1), exc.problem,
                        exc.fix) from None


def _kv_sharded_twin(scenario: Scenario, layout: KvShardedLayout, profiles: ProfilesArg,
                     requests: list[Request] | None) -> Twin:
    twin = _base_twin(scenario, UniformLayout(tp=layout.tp, replicas=layout.replicas,
                                              gpus=layout.gpus), profiles, requests)
    swapped: dict[int, KvShardedStageCost] = {}  # shared stages stay shared
    for pipe in twin.pipelines:
        pipe.stages = [swapped.setdefault(id(st), KvShardedStageCost(st.spec, st.cost,
                                                                      layout.comm))
                       for st in pipe.stages]
    twin.scenario, twin.placement = scenario, scenario.placement()
    return twin


def _fa_pool_twin(scenario: Scenario, layout: FaPoolLayout, profiles: ProfilesArg,
                  requests: list[Request] | None) -> Twin:
    base = _base_twin(scenario, layout.base, profiles, requests)
    cluster, model = scenario.cluster, scenario.model
    pool_types = {cluster.gpu_type(g) for g in layout.pool_gpus}
    if len(pool_types) > 1:
        raise SpecError("layout.pool_gpus", f"the pool mixes GPU types {sorted(pool_types)}",
                        "give the pool GPUs of one type")
    pool_type = pool_types.pop()
    cost = CostModel(base.profiles[pool_type], model.dtype, cluster.links, base.provenance)
    base_gpus = list(base.placement.gpus)
    pool = PoolSpec(layout, cost, cluster.link_between(base_gpus + list(layout.pool_gpus)),
                    cluster.link_between(layout.pool_gpus), layout.base.tp)
    memory = pool_memory(model, layout, [pool_type] * len(layout.pool_gpus), base.profiles,
                         scenario.scheduler)
    longest = max(r.prompt_tokens + r.output_tokens for r in base.requests)
    check_pool_fits(layout, memory, longest)
    swapped: dict[int, FaPoolStageCost] = {}  # shared stages stay shared
    for pipe in base.pipelines:
        pipe.stages = [swapped.setdefault(id(st), FaPoolStageCost(st.spec, st.cost, pool))
                       for st in pipe.stages]
    # Long sequences keep their KV on the pool: each base pipeline may fill its share.
    block = scenario.scheduler.kv_block_tokens
    share = pool_kv_blocks(memory, block) // len(base.pipelines)
    plans = [replace(m, kv_tokens=m.kv_tokens + share * block, kv_blocks=m.kv_blocks + share)
             for m in base.memory]
    base.provenance.note(("fa_pool", "mean"), "fa_pool: a decode batch goes to the pool when "
                         "its mean context exceeds the threshold (exact for equal lengths)")
    return PoolTwin(scenario, scenario.placement(), base.profiles, base.pipelines, plans,
                    base.requests, base.provenance, base.warnings, pool, memory)


class PoolEngine(Engine):
    """The engine with the FA pool's GPUs as one shared ``simpy.Container``: a step
    holds its stage, does its base work, then takes the pool GPUs its long sequences
    need (waiting while other pipelines or micro-batches hold them) for the pool's
    share of the step."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        stages = [st for p in self.pipelines for st in p.stages
                  if isinstance(st, FaPoolStageCost)]
        size = stages[0].pool.size if stages else 1
        self.pool = simpy.Container(self.env, capacity=size, init=size)
        self.pool_gpu_s = 0.0  # GPU-seconds of pool work
        self.pool_peak_gpus = 0

    def _contended(self, pipe) -> bool:
        return True  # every step may contend for the pool

    def _occupy(self, i: int, s: int, k: int, batch: StepBatch, time_s: float):
        """A pooled step: the base's share of the step, then the pool's attention on
        ``gpus`` pool GPUs taken from the shared pool (waiting while others hold them)."""
        stage = self.pipelines[i].stages[s]
        gpus, pool_s = stage.pool_demand(batch) if isinstance(stage, FaPoolStageCost) else (0, 0)
        if not gpus:
            yield self.env.timeout(time_s)
            return
        env = self.env
        yield env.timeout(time_s - pool_s)
        yield self.pool.get(gpus)
        self.pool_peak_gpus = max(self.pool_peak_gpus, self.pool.capacity - self.pool.level)
        if self.log is not None:
            self.log.append((env.now, "pool_start", i, s, k, gpus))
        yield env.timeout(pool_s)
        yield self.pool.put(gpus)
        self.pool_gpu_s += pool_s * gpus

def engine_for(twin: Twin) -> type[Engine]:
    """The engine class a twin runs on."""
    return PoolEngine if isinstance(twin, PoolTwin) else Engine


def add_layout_reports(result: SimResult, twin: Twin, engine: Engine) -> None:
    """Append the pool GPUs to a result's per-GPU reports (pipeline and stage -1): busy
    share from the pool GPU-seconds spread evenly; KV capacity of each."""
    if not isinstance(twin, PoolTwin) or not isinstance(engine, PoolEngine):
        return
    n = len(twin.pool_memory)
    window = result.makespan_s
    busy = engine.pool_gpu_s / n / window if window > 0 else 0.0
    result.gpus += [GpuReport(m.gpu, m.gpu_type, -1, -1, busy, 0.0, m.capacity_bytes,
                              m.usable_bytes, 0, m.workspace_bytes, m.kv_capacity_bytes, 0)
                    for m in twin.pool_memory]

