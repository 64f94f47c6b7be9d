"""The closed-form fast path: the same cost model, no event queue, for ranking layouts.

Requests go to pipelines in proportion to their speed and to micro-batch lanes
round-robin (what the engine's router does when they arrive together). A lane's step
takes the pipeline's latency ``L = sum(stage times) + sum(sends)``, and with ``M`` lanes in
flight a lane cannot step faster than its busiest stage serves all lanes, so its
period is ``max(L, max over stages of the lanes' summed stage times)``.

- **Batch arrivals**: each lane's requests run in waves of what fits (``max_running``
  and KV capacity for prompt and output: the fast path does not preempt); a wave's
  prompts are prefilled whole, packed into budget-sized steps (the engine's and the
  executor's prefill-first policy), then its decode steps are summed one by one. For
  identical requests that fit in one wave this is exactly the engine's schedule
  without its event queue, and a test holds the two within 1%.
- **Poisson and trace arrivals**: steady state. A lane's concurrency ``n`` solves
  Little's law ``n = rate x E2E(n)`` (fixed-point iteration), capped by
  ``max_running`` and KV capacity. Prefill steps of arriving prompts run between
  decode steps and stall them: a share ``rate x T_prefill`` of the lane's time, so
  TPOT is the decode step of ``n`` sequences at the mean context stretched by
  ``1 / (1 - rate x T_prefill)``; TTFT is the prompt's prefill step plus, on
  average, half a decode step it waits for. Queueing beyond capacity is not
  modelled: the result then carries a warning.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from twinfer.sim.engine import RunRecord, StageStats, pipeline_speed
from twinfer.sim.results import SimResult
from twinfer.sim.simulate import result_from_run
from twinfer.sim.stage import PipelineModel, StepBatch
from twinfer.sim.twin import ProfilesArg, Twin, build_twin
from twinfer.spec.scenario import Scenario, load_scenario
from twinfer.spec.workload import BatchArrival, Request


def estimate(scenario: Scenario | str | Path, profiles: ProfilesArg = None,
             stage_cache: dict | None = None) -> SimResult:
    """Closed-form prediction for ``scenario``; same result type as ``simulate``.
    ``stage_cache``: see ``build_twin`` (the layout search shares one per scenario)."""
    if not isinstance(scenario, Scenario):
        scenario = load_scenario(scenario)
    start = time.perf_counter()
    twin = build_twin(scenario, profiles, stage_cache=stage_cache)
    record = _record(twin)
    lanes = _assign(twin)
    batch_mode = isinstance(scenario.workload.arrival, BatchArrival)
    warnings = []
    for i in range(len(twin.pipelines)):
        if batch_mode:
            _batch_pipeline(twin, i, lanes[i], record)
            continue
        for k, reqs in enumerate(lanes[i]):
            if not reqs:
                continue
            if _steady_lane(twin, i, reqs, record):
                warnings.append(f"pipeline {i} lane {k}: arrivals exceed what fits; the fast "
                                "path ignores the queue (use `twinfer simulate`)")
    result = result_from_run(twin, record)
    result.engine = "fast"
    result.warnings += warnings
    result.wall_s = time.perf_counter() - start
    return result


def _record(twin: Twin) -> RunRecord:
    n = max(r.rid for r in twin.requests) + 1
    nan = math.nan
    return RunRecord(arrival_s=[nan] * n, first_token_s=[nan] * n, finish_s=[nan] * n,
                     tokens=[0] * n, stages=[[StageStats() for _ in p.stages]
                                             for p in twin.pipelines],
                     kv_peak_blocks=[0] * len(twin.pipelines))


def _assign(twin: Twin) -> list[list[list[Request]]]:
    """Over pipelines in proportion to their speed (the engine's router when requests
    arrive together; round-robin for equal pipelines), then round-robin over lanes."""
    lanes = [[[] for _ in range(p.micro_batches)] for p in twin.pipelines]
    speed = ([pipeline_speed(p) for p in twin.pipelines] if len(twin.pipelines) > 1
             else [1.0])
    turn = [0] * len(lanes)
    for req in sorted(twin.requests, key=lambda r: (r.arrival_s, r.rid)):
        i = min(range(len(lanes)), key=lambda p: (turn[p] + 1) / speed[p])
        lanes[i][turn[i] % len(lanes[i])].append(req)
        turn[i] += 1
    return lanes


def _lane_capacity(twin: Twin, i: int, n_lanes: int) -> tuple[int, int]:
    """(max sequences, KV blocks) one lane may hold when lanes share the pipeline evenly."""
    sched = twin.scenario.scheduler
    return sched.max_running, twin.memory[i].kv_blocks // n_lanes


def _period(pipe: PipelineModel, batch: StepBatch) -> tuple[float, float, list, list]:
    """(lane period, latency, stage times, stage comm times) of a step, every lane alike."""
    return pipe.period(batch)


def _charge(rec: RunRecord, stats: list, times: list[float], comms: list[float]) -> None:
    rec.steps += 1
    for s, st in enumerate(stats):
        st.busy_s += times[s]
        st.comm_s += comms[s]
        st.steps += 1


def _lane_steps(pipe: PipelineModel, reqs: list[Request], cap: tuple[int, int],
                budget: int, block: int) -> list[tuple[StepBatch, list[tuple[int, int]]]]:
    """A lane's steps in order, each with the (rid, tokens so far) that it completes:
    tokens 1 marks the first token, a request's output_tokens its finish."""
    max_running, blocks = cap
    steps: list[tuple[StepBatch, list[tuple[int, int]]]] = []
    pending = list(reqs)
    while pending:
        wave, used = [], 0
        for req in pending:
            need = -(-(req.prompt_tokens + req.output_tokens) // block)
            if len(wave) == max_running or used + need > max(blocks, need):
                break
            wave.append(req)
            used += need
        pending = pending[len(wave):]
        queue = list(wave)
        while queue:  # whole prompts packed into budget-sized steps (a longer one alone)
            take, tokens = 0, 0
            for req in queue:
                if take and tokens + req.prompt_tokens > budget:
                    break
                take += 1
                tokens += req.prompt_tokens
            chunks = tuple((r.prompt_tokens, 0) for r in queue[:take])
            steps.append((StepBatch(0, 0, chunks, tokens, take),
                          [(r.rid, 1) for r in queue[:take]]))
            queue = queue[take:]
        live, step = wave, 1
        while True:  # decode steps: every live sequence emits one token
            live = [r for r in live if r.output_tokens > step]
            if not live:
                break
            ctx_sum = sum(r.prompt_tokens + step for r in live)
            steps.append((StepBatch(len(live), ctx_sum, (), 0, len(live)),
                          [(r.rid, step + 1) for r in live]))
            step += 1
    return steps


def _batch_pipeline(twin: Twin, i: int, lanes: list[list[Request]], rec: RunRecord) -> None:
    """Every lane's steps through the stages by the flow-shop recurrence (max-plus):
    a step enters stage s when both it and the stage are free; stages and links serve
    in the order steps become ready, as the engine's FIFO resources do."""
    pipe, stats = twin.pipelines[i], rec.stages[i]
    sched = twin.scenario.scheduler
    cap = _lane_capacity(twin, i, len(lanes))
    plans = [_lane_steps(pipe, reqs, cap, sched.max_prefill_tokens, sched.kv_block_tokens)
             for reqs in lanes]
    outputs = {}
    for reqs in lanes:
        for req in reqs:
            rec.arrival_s[req.rid] = req.arrival_s
            outputs[req.rid] = req.output_tokens
    ready = [0.0] * len(plans)
    cursor = [0] * len(plans)
    stage_free = [0.0] * len(pipe.stages)
    link_free = [0.0] * len(pipe.hops)
    while True:
        todo = [k for k in range(len(plans)) if cursor[k] < len(plans[k])]
        if not todo:
            return
        k = min(todo, key=lambda q: (ready[q], q))
        batch, events = plans[k][cursor[k]]
        cursor[k] += 1
        times, comms, sends = pipe.step(batch)
        _charge(rec, stats, times, comms)
        t = ready[k] + pipe.lead_s
        for s, time_s in enumerate(times):
            t = max(t, stage_free[s]) + time_s
            stage_free[s] = t
            if s < len(sends):
                t = max(t, link_free[s]) + sends[s]
                link_free[s] = t
                stats[s].send_s += sends[s]
        ready[k] = t
        rec.tokens_emitted += len(events)
        for rid, tokens in events:
            rec.tokens[rid] = tokens
            if tokens == 1:
                rec.first_token_s[rid] = t
            if tokens == outputs[rid]:
                rec.finish_s[rid] = t


def _steady_lane(twin: Twin, i: int, reqs: list[Request], rec: RunRecord) -> bool:
    """Steady state of one of pipeline ``i``'s lanes under its arrival rate; True if it
    cannot keep up."""
    pipe, stats = twin.pipelines[i], rec.stages[i]
    max_running, blocks = _lane_capacity(twin, i, pipe.micro_batches)
    block = twin.scenario.scheduler.kv_block_tokens
    mean_p = sum(r.prompt_tokens for r in reqs) / len(reqs)
    mean_o = sum(r.output_tokens for r in reqs) / len(reqs)
    span = reqs[-1].arrival_s - reqs[0].arrival_s
    rate = (len(reqs) - 1) / span if span > 0 else math.inf
    n_max = max(1, min(max_running, blocks // max(1, -(-int(mean_p + mean_o) // block))))

    prompt = max(1, round(mean_p))
    prefill = StepBatch(0, 0, ((prompt, 0),), prompt, 1)
    prefill_period, prefill_latency, _, _ = _period(pipe, prefill)
    stall = min(0.95, rate * prefill_period) if rate < math.inf else 0.95

    def decode_step(n: float) -> StepBatch:
        nn = max(1, round(n))
        return StepBatch(nn, round(nn * (mean_p + mean_o / 2)), (), 0, nn)

    def tpot_of(n: float) -> float:
        """A decode step, stretched by the prefill steps that stall it."""
        return _period(pipe, decode_step(n))[0] / (1.0 - stall)

    n = 1.0
    for _ in range(50):
        e2e = prefill_latency + tpot_of(n) * (mean_o - 1)
        n_next = min(n_max, max(1.0, rate * e2e))
        if abs(n_next - n) < 1e-3:
            break
        n = n_next
    nn = max(1, round(n))
    tpot = tpot_of(n)
    wait = _period(pipe, decode_step(nn - 1))[0] / 2 if nn > 1 else 0.0
    for req in reqs:
        ttft = wait + _period(pipe, StepBatch(0, 0, ((req.prompt_tokens, 0),),
                                              req.prompt_tokens, 1))[1]
        rec.arrival_s[req.rid] = req.arrival_s
        rec.first_token_s[req.rid] = req.arrival_s + ttft
        rec.finish_s[req.rid] = req.arrival_s + ttft + (req.output_tokens - 1) * tpot
        rec.tokens[req.rid] = req.output_tokens
        rec.tokens_emitted += req.output_tokens
    busy_share = len(reqs) * (mean_o - 1) / nn  # decode steps the lane takes
    _, _, times, comms = _period(pipe, decode_step(nn))
    _, _, p_times, p_comms = _period(pipe, prefill)
    for s, st in enumerate(stats):
        st.busy_s += times[s] * busy_share + p_times[s] * len(reqs)
        st.comm_s += comms[s] * busy_share + p_comms[s] * len(reqs)
    return rate * (tpot * mean_o) > n_max or rate * prefill_period >= 0.95
