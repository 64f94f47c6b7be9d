"""Layout search: enumerate, drop what does not fit, rank with the fast path, refine
the best with the SimPy engine, and report the Pareto front.

Vidur's search (Agrawal et al., MLSys 2024) simulates every configuration with its
event-driven simulator and reports about an hour on a CPU machine for LLaMA2-70B.
Here the closed-form fast path (``twinfer.sim.fast``, the same cost model without
the event queue) ranks every candidate of ``twinfer.sim.candidates`` in
milliseconds each; only the ``top_k`` best by the objective are re-run through the
SimPy engine (queueing, contention for an FA pool, micro-batch interleaving).

The candidates are evaluated in chunks by an executor: a local process pool by
default, or the ranks of an MPI job (``twinfer.search_mpi``, outside ``sim`` so that
the twin never imports MPI) when launched under ``mpirun``. Results are
deterministic whatever the executor: candidates keep their enumeration order and
ties break on it.

Objectives: ``tpot`` (lowest mean time per output token), ``tps`` (highest output
tokens per second), ``cost`` (highest tokens per second per GPU); SLOs on TTFT and
TPOT (mean) drop the candidates that miss them, unless none meets them (then the
result says so).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Literal

from twinfer.sim.candidates import GpuType, SearchSpace, enumerate_layouts
from twinfer.sim.twin import SIMULATED_KINDS, resolve_profiles
from twinfer.spec.cluster import ClusterSpec, NodeSpec
from twinfer.spec.errors import SpecError
from twinfer.spec.scenario import Scenario, scenario_from_dict

Objective = Literal["tpot", "tps", "cost"]
CHUNK = 48  # candidates per task: amortizes process start-up and scenario rebuilds
_STAGE_CACHES: dict[str, dict] = {}  # per process: scenario -> shared stage costs


@dataclass(frozen=True)
class SearchOptions:
    objective: Objective = "tpot"
    slo_ttft_s: float | None = None
    slo_tpot_s: float | None = None
    top_k: int = 8
    workers: int = 0  # 0: every CPU core; 1: in this process
    space: SearchSpace = field(default_factory=SearchSpace)


@dataclass(frozen=True)
class Candidate:
    """One evaluated layout (``error`` set when it was dropped)."""

    index: int  # enumeration order
    layout: dict
    kind: str
    num_gpus: int
    tpot_s: float = float("nan")
    ttft_s: float = float("nan")
    tps: float = 0.0
    engine: str = "fast"
    error: str = ""

    @property
    def tps_per_gpu(self) -> float:
        return self.tps / self.num_gpus

    def meets(self, opts: SearchOptions) -> bool:
        return ((opts.slo_ttft_s is None or self.ttft_s <= opts.slo_ttft_s)
                and (opts.slo_tpot_s is None or self.tpot_s <= opts.slo_tpot_s))


@dataclass
class SearchResult:
    scenario: Scenario
    options: SearchOptions
    enumerated: int
    evaluated: list[Candidate]  # fit and ran (fast path)
    dropped: list[Candidate]  # did not fit, or the twin refused them
    refined: list[Candidate]  # the top-k through the SimPy engine
    pareto: list[Candidate]
    chosen: Candidate
    slo_met: bool
    wall_s: float
    fast_wall_s: float


def score(c: Candidate, objective: Objective) -> tuple:
    """Sort key: smaller is better; ties keep enumeration order."""
    if objective == "tpot":
        return (c.tpot_s, -c.tps, c.index)
    if objective == "tps":
        return (-c.tps, c.tpot_s, c.index)
    return (-c.tps_per_gpu, c.tpot_s, c.index)


def pareto_front(cands: Sequence[Candidate]) -> list[Candidate]:
    """The candidates no other beats on TPOT, TPS and GPU count all at once."""
    front = []
    for a in cands:
        dominated = any(
            b.tpot_s <= a.tpot_s and b.tps >= a.tps and b.num_gpus <= a.num_gpus
            and (b.tpot_s < a.tpot_s or b.tps > a.tps or b.num_gpus < a.num_gpus)
            for b in cands)
        if not dominated:
            front.append(a)
    return sorted(front, key=lambda c: (c.num_gpus, c.tpot_s, c.index))


# ---- evaluation (runs in worker processes) ---------------------------------------------
def evaluate_chunk(scenario_doc: dict, base_dir: str, chunk: list[tuple[int, dict]],
                   engine: str) -> list[Candidate]:
    """Predict each (index, layout) of ``chunk``; a module-level function so that
    process pools and MPI workers can call it."""
    from twinfer.sim.fast import estimate
    from twinfer.sim.simulate import simulate

    scenario = scenario_from_dict(scenario_doc, base_dir=base_dir or None)
    # stage costs carry over between candidates of one scenario in this process
    cache = _STAGE_CACHES.setdefault(json.dumps(scenario_doc, sort_keys=True), {})
    out = []
    for index, layout in chunk:
        kind = layout["kind"]
        try:
            candidate = scenario.with_layout(layout)
            gpus = len(candidate.placement().gpus)
            result = (estimate(candidate, stage_cache=cache) if engine == "fast"
                      else simulate(candidate))
        except SpecError as exc:
            out.append(Candidate(index, layout, kind, _count_gpus(layout), error=str(exc)))
            continue
        out.append(Candidate(index, layout, kind, gpus, result.tpot_s.mean, result.ttft_s.mean,
                             result.tps, engine))
    return out


def _count_gpus(layout: dict) -> int:
    if layout["kind"] == "hetero":
        return sum(len(s["gpus"]) for p in layout["pipelines"] for s in p["stages"])
    if layout["kind"] == "fa_pool":
        return _count_gpus({**layout["base"], "kind": "uniform"}) + len(layout["pool_gpus"])
    return len(layout.get("gpus") or []) or layout.get("tp", 1) * layout.get("pp", 1) * \
        layout.get("replicas", 1)


def _evaluate(executor: Executor | None, scenario: Scenario, items: list[tuple[int, dict]],
              engine: str) -> list[Candidate]:
    doc, base = scenario.to_dict(), scenario.base_dir
    chunks = [items[i:i + CHUNK] for i in range(0, len(items), CHUNK)]
    if executor is None:
        parts = [evaluate_chunk(doc, base, c, engine) for c in chunks]
    else:
        n = len(chunks)
        parts = list(executor.map(evaluate_chunk, [doc] * n, [base] * n, chunks, [engine] * n))
    return sorted((c for part in parts for c in part), key=lambda c: c.index)


def default_executor(workers: int) -> Executor | None:
    """Local worker processes (``workers``; 0 = one per core), or None (in process).
    Under mpirun the caller passes MPI ranks instead (``twinfer.search_mpi``)."""
    n = workers or os.cpu_count() or 1
    if n <= 1:
        return None
    import multiprocessing

    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    return ProcessPoolExecutor(n, mp_context=multiprocessing.get_context(method))


# ---- the search ------------------------------------------------------------------------
def gpu_types(scenario: Scenario) -> dict[str, GpuType]:
    """The search's view of each GPU type, from its profile."""
    return {t: GpuType(t, p.peaks.copy_bytes_per_s, p.device.memory_bytes)
            for t, p in resolve_profiles(scenario).items()}


def on_cluster(scenario: Scenario, cluster: ClusterSpec) -> Scenario:
    """The scenario on another cluster; its layout becomes a one-GPU placeholder and
    its baseline and sweep are dropped (a search chooses the layout)."""
    doc = scenario.to_dict()
    doc.pop("baseline", None)
    doc.pop("sweep", None)
    doc["cluster"] = cluster.model_dump(mode="json", exclude_none=True)
    doc["layout"] = {"kind": "uniform", "tp": 1, "gpus": [0]}
    return scenario_from_dict(doc, base_dir=scenario.base_dir or None)


def parse_gpus(spec: str, per_node: int = 8) -> ClusterSpec:
    """``h100-sxm:8,h200-sxm:8,a100-sxm-80g:16`` -> nodes of at most ``per_node``
    NVLink GPUs of one type, joined by InfiniBand."""
    nodes = []
    for part in spec.split(","):
        name, _, count = part.strip().partition(":")
        if not name or not count.isdigit() or int(count) < 1:
            raise SpecError("--gpus", f"cannot read {part.strip()!r}",
                            "write TYPE:COUNT[,TYPE:COUNT...], e.g. h100-sxm:8,a100-sxm-80g:16")
        left = int(count)
        while left:
            n = min(left, per_node)
            nodes.append(NodeSpec(name=f"{name}-{len(nodes)}", gpu=name, count=n))
            left -= n
    return ClusterSpec(nodes=nodes)


def search(scenario: Scenario, opts: SearchOptions | None = None,
           executor: Executor | None = None,
           progress: Callable[[str], None] | None = None) -> SearchResult:
    """Search ``scenario``'s cluster for the best layout by ``opts.objective``."""
    opts = opts or SearchOptions()
    say = progress or (lambda _msg: None)
    start = time.perf_counter()
    space = replace(opts.space, kinds=tuple(k for k in opts.space.kinds if k in SIMULATED_KINDS))
    layouts = enumerate_layouts(scenario.model, scenario.cluster, gpu_types(scenario), space)
    items = [(i, lay.model_dump(mode="json", exclude_none=True)) for i, lay in enumerate(layouts)]
    say(f"{len(items)} candidate layouts ({', '.join(space.kinds)})")
    own = executor is None and opts.workers != 1
    pool = default_executor(opts.workers) if own else executor
    try:
        fast = _evaluate(pool, scenario, items, "fast")
        fast_wall = time.perf_counter() - start
        ok = [c for c in fast if not c.error]
        say(f"fast path: {len(ok)} fit, {len(fast) - len(ok)} dropped, {fast_wall:.1f} s")
        if not ok:
            raise SpecError("search", "no candidate layout fits this model on this cluster",
                            "add GPUs or use GPUs with more memory")
        feasible = [c for c in ok if c.meets(opts)] or ok
        top = sorted(feasible, key=lambda c: score(c, opts.objective))[:opts.top_k]
        refined = _evaluate(pool, scenario, [(c.index, c.layout) for c in top], "simpy")
    finally:
        if own and pool is not None:
            pool.shutdown()
    good = [c for c in refined if not c.error]
    meeting = [c for c in good if c.meets(opts)]
    chosen = min(meeting or good or top, key=lambda c: score(c, opts.objective))
    return SearchResult(scenario, opts, len(items), ok, [c for c in fast if c.error], good,
                        pareto_front(ok), chosen, bool(meeting),
                        time.perf_counter() - start, fast_wall)


def chosen_scenario(result: SearchResult) -> Scenario:
    return result.scenario.with_layout(result.chosen.layout)


def mpirun_command(scenario: Scenario, path: str) -> str:
    """How to execute a scenario for real: GPU id g runs on MPI rank g."""
    ranks = max(scenario.placement().gpus) + 1
    return (f"PYTHONPATH=. mpirun --allow-run-as-root -np {ranks} python -m twinfer.exec "
            f"{path} --out results.json")
