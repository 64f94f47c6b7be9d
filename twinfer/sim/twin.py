"""Assemble a scenario's twin: profiles, cost models, pipeline models, memory plan.

Everything is built from the layout's ``Placement`` (pipelines of stages, each a TP
group of GPU ids and a layer range), so any layout that places as pipelines runs:
``uniform`` and ``hetero`` (stages of different TP degree, GPU type and layer
count). Layouts whose work is not a plain pipeline (``fa_pool``'s attention pool,
``kv_sharded``'s split KV) bring their own stage costs and engine
(``twinfer.sim.layouts``); a kind with neither is refused with a ``SpecError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from twinfer.sim.cost import CostModel, Provenance
from twinfer.sim.memory import PipelineMemory, plan_memory
from twinfer.sim.profile import Profile, load_profile, shipped_profiles
from twinfer.sim.stage import HopCost, HopSpec, PipelineModel, StageCost, StageSpec
from twinfer.spec.errors import SpecError
from twinfer.spec.layout import Placement
from twinfer.spec.scenario import Scenario
from twinfer.spec.workload import Request

SIMULATED_KINDS = ("uniform", "hetero", "fa_pool", "kv_sharded")

ProfileArg = Profile | str | Path
ProfilesArg = ProfileArg | Mapping[str, ProfileArg] | None


@dataclass
class Twin:
    """A scenario made ready to simulate."""

    scenario: Scenario
    placement: Placement
    profiles: dict[str, Profile]  # GPU type -> profile
    pipelines: list[PipelineModel]
    memory: list[PipelineMemory]
    requests: list[Request]
    provenance: Provenance
    warnings: list[str]


def _as_profile(value: ProfileArg, base_dir: str = "") -> Profile:
    if isinstance(value, Profile):
        return value
    path = Path(value)
    if base_dir and not path.is_absolute() and (Path(base_dir) / path).exists():
        path = Path(base_dir) / path
    return load_profile(path if path.exists() else str(value))


def resolve_profiles(scenario: Scenario, profiles: ProfilesArg = None) -> dict[str, Profile]:
    """The profile of every GPU type in the cluster.

    Precedence: ``profiles`` (one profile for a one-type cluster, or a mapping GPU
    type -> profile/path), then the scenario's ``profiles:``, then the shipped
    profile named like the GPU type.
    """
    types = list(dict.fromkeys(scenario.cluster.gpu_types()))
    given: dict[str, ProfileArg] = {}
    if isinstance(profiles, Mapping):
        given = dict(profiles)
    elif profiles is not None:
        single = _as_profile(profiles)
        if len(types) == 1:
            given = {types[0]: single}
        elif single.name in types:
            given = {single.name: single}
        else:
            raise SpecError("profile", f"{single.name} matches none of the cluster's GPU types "
                            f"({', '.join(types)})", "pass one per type, e.g. TYPE=PATH")
    out = {}
    for gpu_type in types:
        if gpu_type in given:
            out[gpu_type] = _as_profile(given[gpu_type])
        elif gpu_type in scenario.profiles:
            out[gpu_type] = _as_profile(scenario.profiles[gpu_type], scenario.base_dir)
        elif gpu_type in shipped_profiles():
            out[gpu_type] = load_profile(gpu_type)
        else:
            node = next(n for n, nd in enumerate(scenario.cluster.nodes) if nd.gpu == gpu_type)
            raise SpecError(f"cluster.nodes.{node}.gpu",
                            f"no profile for GPU type {gpu_type!r}",
                            f"use one of {', '.join(shipped_profiles())} or map it in "
                            f"profiles: {{{gpu_type}: path/to/profile.json}}")
    return out


def _check_requests(scenario: Scenario, requests: list[Request]) -> None:
    model = scenario.model
    longest = max(requests, key=lambda r: r.prompt_tokens + r.output_tokens)
    if longest.prompt_tokens + longest.output_tokens > model.max_position:
        raise SpecError("workload", f"request {longest.rid} needs "
                        f"{longest.prompt_tokens + longest.output_tokens} positions but "
                        f"{model.name} has max_position={model.max_position}",
                        "shorten prompt_tokens/output_tokens or raise model.max_position")


def build_twin(scenario: Scenario, profiles: ProfilesArg = None,
               requests: list[Request] | None = None,
               stage_cache: dict | None = None) -> Twin:
    """Validate what only the twin can check (profiles, memory) and build its models.

    ``stage_cache`` (the layout search's): stage costs reused across twins of one
    scenario, keyed by (stage, GPU type), so that their computed times carry over; the
    twin's provenance then lists only what its own new stages looked up.
    """
    kind = scenario.layout.kind
    if kind in ("fa_pool", "kv_sharded"):  # their own stage costs (twinfer.sim.layouts)
        from twinfer.sim.layouts import build_layout_twin

        return build_layout_twin(scenario, profiles, requests)
    if kind not in SIMULATED_KINDS:
        raise SpecError("layout.kind", f"the twin does not simulate {kind} layouts yet",
                        f"use one of: {', '.join(SIMULATED_KINDS)}")
    placement = scenario.placement()
    by_type = resolve_profiles(scenario, profiles)
    requests = scenario.requests() if requests is None else requests
    _check_requests(scenario, requests)
    provenance = Provenance()
    model, cluster = scenario.model, scenario.cluster
    costs: dict[str, CostModel] = {}
    if stage_cache is not None:  # the search: cost models and their caches carry over too
        costs = stage_cache.setdefault("cost_models", {})
    for t, p in by_type.items():
        if t not in costs:
            costs[t] = CostModel(p, model.dtype, cluster.links, provenance)
    longest = max(r.prompt_tokens + r.output_tokens for r in requests)
    memory = plan_memory(model, placement, cluster, by_type, scenario.scheduler, longest)
    pipelines = []
    shared: dict[tuple, StageCost] = {} if stage_cache is None else stage_cache
    for i, pipe in enumerate(placement.pipelines):
        stage_costs, gpu_types = [], []
        for j, stage in enumerate(pipe.stages):
            kinds = {cluster.gpu_type(g) for g in stage.gpus}
            if len(kinds) > 1:
                raise SpecError(f"layout (pipeline {i}, stage {j})",
                                f"the stage's TP group mixes GPU types {sorted(kinds)}",
                                "give each stage GPUs of one type")
            gpu_type = kinds.pop()
            gpu_types.append(gpu_type)
            spec = StageSpec(model, stage.tp, stage.num_layers, cluster.link_between(stage.gpus),
                             first=j == 0, last=j == len(pipe.stages) - 1)
            if stage.tp > 1:
                costs[gpu_type].check_link(spec.link)
            # identical stages (replicas) share one cost object and its caches
            key = (spec, gpu_type)
            if key not in shared:
                shared[key] = StageCost(spec, costs[gpu_type])
            stage_costs.append(shared[key])
        hops = []
        for j in range(len(pipe.stages) - 1):
            a, b = pipe.stages[j], pipe.stages[j + 1]
            spec = HopSpec(model.hidden * model.dtype_bytes,
                           cluster.link_between((a.leader, b.leader)), b.tp,
                           cluster.link_between(b.gpus), broadcast=a.tp != b.tp)
            costs[gpu_types[j]].check_link(spec.send_link)
            if spec.broadcast and b.tp > 1:
                costs[gpu_types[j + 1]].check_link(spec.recv_link)
            hops.append(HopCost(spec, costs[gpu_types[j]], costs[gpu_types[j + 1]]))
        lead_s = sum(costs[gpu_types[j]].profile.overheads.stage_step_s
                     for j in range(len(pipe.stages) - 1))
        pipelines.append(PipelineModel(stage_costs, hops, [s.gpus for s in pipe.stages],
                                       pipe.micro_batches, lead_s))
    return Twin(scenario, placement, by_type, pipelines, memory, requests, provenance,
                _warnings(by_type))


def _warnings(profiles: dict[str, Profile]) -> list[str]:
    out = []
    for gpu_type, p in sorted(profiles.items()):
        if p.source == "datasheet":
            out.append(f"{gpu_type}: profile {p.name} is datasheet-derived, not measured; "
                       "its predictions are uncalibrated")
        elif p.source == "coarse first measurements":
            out.append(f"{gpu_type}: profile {p.name} holds coarse first measurements; "
                       "run `twinfer calibrate` for full sweeps")
        if p.overheads.step_s == 0 and p.overheads.per_layer_s == 0:
            out.append(f"{gpu_type}: profile {p.name} has no measured step overheads (0 s)")
    return out
