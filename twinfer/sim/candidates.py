"""The layout search space: every layout worth predicting for a model on a cluster.

Four families, as the layout kinds (../shared/DESIGN.md):

- **uniform** TP x PP x replicas on the cluster's GPUs in id order, and on the GPUs
  of each single type (a layout that leaves the other types idle);
- **hetero** (HexGen, Jiang et al., ICML 2024): each GPU type is cut into TP groups
  of its own degree; then either every type forms pipelines of its own depth (the
  pipelines differ across types), or pipelines chain one group of several types,
  their layers split in proportion to each stage's speed (TP degree x the type's
  memory bandwidth, decode being bandwidth-bound) and refined by moving one layer
  between the fastest and the slowest stage;
- **fa_pool**: a TP base on one type plus a pool of the following GPUs, for several
  pool sizes and thresholds;
- **kv_sharded**: the sequence-split KV group of each TP degree, per exchange variant.

Candidates whose weights cannot fit are dropped here by a quick per-GPU estimate;
the twin's memory plan (``twinfer.sim.memory``) has the last word.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

from twinfer.spec.cluster import ClusterSpec
from twinfer.spec.errors import SpecError
from twinfer.spec.layout import (
    FaPoolLayout,
    HeteroLayout,
    KvShardedLayout,
    PipelineSpec,
    StageSpec,
    UniformLayout,
    check_tp,
    split_layers,
)
from twinfer.spec.model import ModelSpec

GIB = 1 << 30


@dataclass(frozen=True)
class GpuType:
    """What the search needs of a GPU type (read from its profile)."""

    name: str
    bytes_per_s: float  # memory bandwidth: the decode-speed proxy for layer splits
    memory_bytes: int


@dataclass(frozen=True)
class SearchSpace:
    tp: tuple[int, ...] = (1, 2, 4, 8)
    max_pp: int = 8
    kinds: tuple[str, ...] = ("uniform", "hetero", "fa_pool", "kv_sharded")
    fa_thresholds: tuple[int, ...] = (2048, 4096, 8192)
    kv_comms: tuple[str, ...] = ("allgather", "fused")
    memory_utilization: float = 0.9
    reserve_bytes: int = 2 * GIB  # workspace + activations, a rough allowance


@dataclass(frozen=True)
class _Ctx:
    model: ModelSpec
    cluster: ClusterSpec
    types: dict[str, GpuType]
    space: SearchSpace


def _tp_ok(model: ModelSpec, tp: int) -> bool:
    try:
        check_tp(tp, model, "tp")
    except SpecError:
        return False
    return True


def _fits(ctx: _Ctx, gpu_type: str, tp: int, layers: int, ends: tuple[bool, bool]) -> bool:
    """Do ``layers`` layers (plus embedding/LM head at the pipeline's ends) fit one GPU?"""
    m = ctx.model
    params = layers * m.params_per_layer / tp
    params += (m.embedding_params * ends[0] + m.lm_head_params * ends[1]) / tp
    budget = ctx.types[gpu_type].memory_bytes * ctx.space.memory_utilization
    return params * m.dtype_bytes + ctx.space.reserve_bytes < budget


def _ids_by_type(cluster: ClusterSpec) -> dict[str, list[list[int]]]:
    """GPU ids per type, grouped by node (TP groups never straddle nodes)."""
    out: dict[str, list[list[int]]] = {}
    start = 0
    for node in cluster.nodes:
        out.setdefault(node.gpu, []).append(list(range(start, start + node.count)))
        start += node.count
    return out


def _tp_groups(nodes: list[list[int]], tp: int) -> list[tuple[int, ...]]:
    return [tuple(ids[i:i + tp]) for ids in nodes for i in range(0, len(ids) - tp + 1, tp)]


# ---- uniform -------------------------------------------------------------------------
def _uniform(ctx: _Ctx, ids: list[int]) -> Iterator[UniformLayout]:
    m, types = ctx.model, ctx.cluster.gpu_types()
    for tp in ctx.space.tp:
        if not _tp_ok(m, tp):
            continue
        for pp in range(1, min(ctx.space.max_pp, m.layers) + 1):
            per_replica = tp * pp
            counts = split_layers(m.layers, pp)
            replicas = [r for r in range(1, len(ids) // per_replica + 1)
                        if r & (r - 1) == 0 or r == len(ids) // per_replica]
            for r in replicas:
                gpus = ids[:per_replica * r]
                stages = [gpus[i:i + tp] for i in range(0, len(gpus), tp)]
                if any(len({types[g] for g in s}) > 1 for s in stages):
                    continue  # a TP group mixing GPU types
                if not all(_fits(ctx, types[s[0]], tp, counts[i % pp],
                                 (i % pp == 0, i % pp == pp - 1))
                           for i, s in enumerate(stages)):
                    continue
                yield UniformLayout(tp=tp, pp=pp, replicas=r, gpus=gpus)


# ---- hetero --------------------------------------------------------------------------
def _per_type_options(ctx: _Ctx, gpu_type: str,
                      nodes: list[list[int]]) -> list[list[PipelineSpec]]:
    """Pipelines made of one type's GPUs: for each TP degree and depth that fits."""
    m = ctx.model
    options = []
    for tp in ctx.space.tp:
        if not _tp_ok(m, tp):
            continue
        groups = _tp_groups(nodes, tp)
        for depth in range(1, min(ctx.space.max_pp, len(groups), m.layers) + 1):
            if len(groups) % depth:
                continue
            counts = split_layers(m.layers, depth)
            if not all(_fits(ctx, gpu_type, tp, c, (j == 0, j == depth - 1))
                       for j, c in enumerate(counts)):
                continue
            options.append([
                PipelineSpec(stages=[StageSpec(gpus=list(groups[p * depth + j]), layers=c)
                                     for j, c in enumerate(counts)])
                for p in range(len(groups) // depth)])
    return options


def proportional_layers(layers: int, speeds: list[float]) -> list[int]:
    """Split ``layers`` in proportion to ``speeds`` (largest remainders), each >= 1."""
    total = sum(speeds)
    exact = [layers * s / total for s in speeds]
    counts = [max(1, int(x)) for x in exact]
    order = sorted(range(len(speeds)), key=lambda i: exact[i] - int(exact[i]), reverse=True)
    i = 0
    while sum(counts) < layers:
        counts[order[i % len(order)]] += 1
        i += 1
    while sum(counts) > layers:
        j = max(range(len(counts)), key=lambda k: counts[k] - exact[k])
        counts[j] -= 1
    return counts


def _refinements(counts: list[int], speeds: list[float]) -> list[list[int]]:
    """The proportional split and one layer moved each way between the fastest and
    the slowest stage."""
    out = [counts]
    fast = max(range(len(speeds)), key=lambda i: speeds[i])
    slow = min(range(len(speeds)), key=lambda i: speeds[i])
    if fast != slow:
        for src, dst in ((slow, fast), (fast, slow)):
            if counts[src] > 1:
                moved = list(counts)
                moved[src] -= 1
                moved[dst] += 1
                out.append(moved)
    return out


def _chains(ctx: _Ctx, by_type: dict[str, list[list[int]]]) -> Iterator[HeteroLayout]:
    """Pipelines that chain one TP group of each of several types, fastest first."""
    m = ctx.model
    names = sorted(by_type, key=lambda t: -ctx.types[t].bytes_per_s)
    for k in range(2, len(names) + 1):
        for subset in itertools.combinations(names, k):
            tps = [[t for t in ctx.space.tp if _tp_ok(m, t)] for _ in subset]
            for degrees in itertools.product(*tps):
                groups = [_tp_groups(by_type[t], d) for t, d in zip(subset, degrees, strict=True)]
                n_pipes = min(len(g) for g in groups)
                if n_pipes == 0:
                    continue
                speeds = [d * ctx.types[t].bytes_per_s
                          for t, d in zip(subset, degrees, strict=True)]
                base = proportional_layers(m.layers, speeds)
                for counts in _refinements(base, speeds):
                    if not all(_fits(ctx, t, d, c, (j == 0, j == k - 1)) for j, (t, d, c)
                               in enumerate(zip(subset, degrees, counts, strict=True))):
                        continue
                    pipes = [PipelineSpec(stages=[StageSpec(gpus=list(groups[j][p]), layers=c)
                                                  for j, c in enumerate(counts)])
                             for p in range(n_pipes)]
                    yield HeteroLayout(pipelines=pipes)


def _hetero(ctx: _Ctx) -> Iterator[HeteroLayout]:
    by_type = _ids_by_type(ctx.cluster)
    if len(by_type) < 2:
        return  # one GPU type: uniform layouts cover it
    per_type = [[None, *_per_type_options(ctx, t, nodes)] for t, nodes in by_type.items()]
    for combo in itertools.product(*per_type):
        used = [pipes for pipes in combo if pipes is not None]
        if len(used) >= 2:  # one type alone is a uniform layout
            yield HeteroLayout(pipelines=[p for pipes in used for p in pipes])
    yield from _chains(ctx, by_type)


# ---- fa_pool and kv_sharded ----------------------------------------------------------
def _fa_pool(ctx: _Ctx, ids: list[int], gpu_type: str) -> Iterator[FaPoolLayout]:
    m = ctx.model
    for tp in ctx.space.tp:
        if tp >= len(ids) or not _tp_ok(m, tp) or not _fits(ctx, gpu_type, tp, m.layers,
                                                            (True, True)):
            continue
        pool = 1
        while tp + pool <= len(ids):
            for threshold in ctx.space.fa_thresholds:
                yield FaPoolLayout(base=UniformLayout(tp=tp, gpus=ids[:tp]),
                                   pool_gpus=ids[tp:tp + pool], threshold_tokens=threshold)
            pool *= 2


def _kv_sharded(ctx: _Ctx, ids: list[int], gpu_type: str) -> Iterator[KvShardedLayout]:
    m = ctx.model
    for tp in ctx.space.tp:
        if tp < 2 or tp > len(ids) or not _tp_ok(m, tp):
            continue
        if not _fits(ctx, gpu_type, tp, m.layers, (True, True)):
            continue
        r = 1
        while tp * r <= len(ids):
            for comm in ctx.space.kv_comms:
                yield KvShardedLayout(tp=tp, replicas=r, comm=comm, gpus=ids[:tp * r])
            r *= 2


def enumerate_layouts(model: ModelSpec, cluster: ClusterSpec, types: dict[str, GpuType],
                      space: SearchSpace | None = None) -> list[object]:
    """Every distinct candidate layout of ``space.kinds`` that passes the quick fit."""
    ctx = _Ctx(model, cluster, types, space or SearchSpace())
    all_ids = list(range(cluster.num_gpus))
    by_type = {t: [g for node in nodes for g in node]
               for t, nodes in _ids_by_type(cluster).items()}
    gens: list[Iterator] = []
    kinds = ctx.space.kinds
    if "uniform" in kinds:
        gens.append(_uniform(ctx, all_ids))
        if len(by_type) > 1:
            gens += [_uniform(ctx, ids) for ids in by_type.values()]
    if "hetero" in kinds:
        gens.append(_hetero(ctx))
    for t, ids in by_type.items():
        if "fa_pool" in kinds:
            gens.append(_fa_pool(ctx, ids, t))
        if "kv_sharded" in kinds:
            gens.append(_kv_sharded(ctx, ids, t))
    seen: set[str] = set()
    out = []
    for layout in itertools.chain(*gens):
        key = layout.model_dump_json()
        if key not in seen:
            seen.add(key)
            out.append(layout)
    return out
