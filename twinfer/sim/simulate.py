"""``simulate(scenario)``: the twin's one entry point, used by the CLI and the tests."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from twinfer.sim.engine import RunRecord
from twinfer.sim.layouts import add_layout_reports, engine_for
from twinfer.sim.results import GpuReport, LinkReport, SimResult, Stat, latency_stats
from twinfer.sim.trace import write_chrome_trace
from twinfer.sim.twin import ProfilesArg, Twin, build_twin
from twinfer.spec.errors import SpecError
from twinfer.spec.scenario import Scenario, load_scenario


def simulate(scenario: Scenario | str | Path, profiles: ProfilesArg = None,
             trace: str | Path | None = None, log: list | None = None,
             kv_blocks: list[int] | None = None) -> SimResult:
    """Run the SimPy twin on ``scenario`` (an object, a YAML path or a shipped name).

    ``profiles`` overrides the GPU profiles (see ``twin.resolve_profiles``); ``trace``
    writes a Chrome/Perfetto trace there; ``log`` receives the engine's event log;
    ``kv_blocks`` gives each pipeline's KV pages as a measured run had them (``compare``:
    the executor sizes its pool from the memory free at start-up, which other work on
    the GPU can shrink), instead of the memory plan's.
    Raises ``SpecError`` for anything the twin cannot simulate.
    """
    if not isinstance(scenario, Scenario):
        scenario = load_scenario(scenario)
    start = time.perf_counter()
    twin = build_twin(scenario, profiles)
    if kv_blocks is None:
        kv_blocks = [m.kv_blocks for m in twin.memory]
    elif len(kv_blocks) != len(twin.memory):
        raise SpecError("kv_blocks", f"gives {len(kv_blocks)} pipelines, the layout has "
                        f"{len(twin.memory)}", "give one page count per pipeline")
    engine = engine_for(twin)(twin.pipelines, list(kv_blocks),
                              twin.requests, scenario.scheduler, trace=trace is not None,
                              log=log)
    record = engine.run()
    result = result_from_run(twin, record)
    add_layout_reports(result, twin, engine)
    result.wall_s = time.perf_counter() - start
    if trace is not None:
        write_chrome_trace(Path(trace), twin, record)
    return result


def describe_layout(twin: Twin) -> str:
    layout = twin.scenario.layout
    if layout.kind == "uniform":
        text = f"uniform tp={layout.tp} pp={layout.pp} replicas={layout.replicas}"
        micro = twin.placement.pipelines[0].micro_batches
        return text + (f" micro_batches={micro}" if micro > 1 else "")
    stages = "; ".join(
        "[" + ", ".join(f"tp{s.tp}x{s.num_layers}L" for s in p.stages) + "]"
        for p in twin.placement.pipelines)
    return f"{layout.kind} {stages}"


def result_from_run(twin: Twin, record: RunRecord) -> SimResult:
    """Metrics of an engine run."""
    scenario = twin.scenario
    reqs = sorted(twin.requests, key=lambda r: r.rid)
    outputs = np.array([r.output_tokens for r in reqs], dtype=float)
    arrival = np.array(record.arrival_s)
    finish = np.array(record.finish_s)
    per_req = latency_stats(arrival, np.array(record.first_token_s), finish, outputs)
    per_req["tokens"] = np.array(record.tokens)
    start = float(np.nanmin(arrival)) if len(arrival) else 0.0
    makespan = max(float(np.nanmax(finish)) - start, 0.0) if len(finish) else 0.0
    window = makespan if makespan > 0 else float("nan")
    total_tokens = int(outputs.sum())
    gpus, links = [], []
    weighted_comm = weighted_busy = 0.0
    block = scenario.scheduler.kv_block_tokens
    for i, (pipe, mem) in enumerate(zip(twin.pipelines, twin.memory, strict=True)):
        by_gpu = {g.gpu: g for g in mem.gpus}
        peak_tokens = record.kv_peak_blocks[i] * block
        for s, ids in enumerate(pipe.gpus):
            stats = record.stages[i][s]
            comm = stats.comm_s + stats.send_s
            weighted_comm += comm * len(ids)
            weighted_busy += (stats.busy_s + stats.send_s) * len(ids)
            for g in ids:
                m = by_gpu[g]
                gpus.append(GpuReport(g, m.gpu_type, i, s, stats.busy_s / window, comm / window,
                                      m.capacity_bytes, m.usable_bytes, m.weights_bytes,
                                      m.workspace_bytes, m.kv_capacity_bytes,
                                      peak_tokens * m.kv_bytes_per_token))
            if s < len(pipe.hops):
                links.append(LinkReport(i, s, pipe.hops[s].spec.send_link,
                                        stats.send_s / window))
    return SimResult(
        scenario=scenario.name, engine="simpy", model=scenario.model.name,
        layout=describe_layout(twin), num_gpus=len(twin.placement.gpus),
        requests=len(reqs), output_tokens=total_tokens, makespan_s=makespan,
        ttft_s=Stat.of(per_req["ttft_s"]), tpot_s=Stat.of(per_req["tpot_s"]),
        e2e_s=Stat.of(per_req["e2e_s"]), tps=total_tokens / window,
        requests_per_s=len(reqs) / window,
        comm_share=weighted_comm / weighted_busy if weighted_busy else 0.0,
        gpus=gpus, links=links, profiles=profile_summaries(twin),
        provenance=twin.provenance.lines(), warnings=list(twin.warnings), steps=record.steps,
        generated_tokens=record.tokens_emitted, per_request=per_req)


def profile_summaries(twin: Twin) -> dict[str, dict[str, str]]:
    return {t: {"name": p.name, "device": p.device.name, "source": p.source,
                "date": p.device.date} for t, p in sorted(twin.profiles.items())}
