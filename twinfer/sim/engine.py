"""The SimPy engine: requests, a router, pipelines of stages, and their micro-batches.

Entities (Vidur's word) and how they map to SimPy:

- each pipeline **stage** (a TP group of GPUs working in lockstep) is a
  ``simpy.Resource`` of capacity one; each **link** between consecutive stages too;
- the **request source** is a process that releases requests at their arrival times
  and hands each to the **router**: the pipeline with the least unfinished work for
  its speed (``pipeline_speed``: pipelines of different GPU types and TP degrees
  serve at different rates), then its least-loaded micro-batch lane (vLLM's virtual
  engines);
- each **lane** is a process that loops: ask its scheduler
  (``twinfer.sim.scheduler.Lane``) for the next step's batch, take it through the
  stages in order (holding each stage for the time the cost model gives, then
  sending the hidden states over the link), then let the scheduler record the
  tokens. With ``micro_batches`` lanes in flight, the stages of a pipeline work on
  different micro-batches at once, which keeps the pipeline full.

An event is a stage's whole step on one micro-batch, never a single kernel. The
per-layout part is the ``PipelineModel`` (``twinfer.sim.stage``): given a batch
composition it returns each stage's time and each hop's send time. A layout whose
stages contend for resources beyond their own GPUs (an attention pool) extends
``Engine._run_stage``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import simpy

from twinfer.sim.scheduler import KvPool, Lane
from twinfer.sim.stage import PipelineModel, StepBatch
from twinfer.spec.workload import Request, SchedulerSpec

ROUTER_BATCH, ROUTER_CONTEXT = 16, 1024  # the reference decode step of `pipeline_speed`


def pipeline_speed(pipe: PipelineModel) -> float:
    """Decode tokens per second of a pipeline at a reference step (the router's weight):
    its lanes each decoding ``ROUTER_BATCH`` sequences of ``ROUTER_CONTEXT`` tokens."""
    n = ROUTER_BATCH
    period, *_ = pipe.period(StepBatch(n, n * ROUTER_CONTEXT, (), 0, n))
    lanes = pipe.micro_batches
    return lanes * n / period if period > 0 else float(lanes * n)


@dataclass
class StageStats:
    busy_s: float = 0.0  # the stage's GPUs were computing or in a TP collective
    comm_s: float = 0.0  # of which TP collectives
    send_s: float = 0.0  # sending to the next stage (link busy)
    steps: int = 0


@dataclass
class RunRecord:
    """What one engine run observed; ``twinfer.sim.results`` turns it into metrics."""

    arrival_s: list[float]
    first_token_s: list[float]
    finish_s: list[float]
    tokens: list[int]
    stages: list[list[StageStats]]  # [pipeline][stage]
    kv_peak_blocks: list[int]  # per pipeline
    tokens_emitted: int = 0
    steps: int = 0
    end_s: float = 0.0
    # with tracing: (pipeline, stage, lane, start_s, time_s, decodes, prompt tokens, comm_s)
    trace: list[tuple] = field(default_factory=list)


class Engine:
    """Simulate ``requests`` on ``pipelines`` under ``scheduler``.

    ``log``, when a list, receives the event log ``(time_s, event, *details)`` in
    order (for tests); ``trace`` records every stage step for a Chrome trace.
    """

    def __init__(self, pipelines: list[PipelineModel], kv_blocks: list[int],
                 requests: list[Request], scheduler: SchedulerSpec, trace: bool = False,
                 log: list | None = None) -> None:
        self.env = simpy.Environment()
        self.pipelines = pipelines
        self.requests = sorted(requests, key=lambda r: (r.arrival_s, r.rid))
        self.trace = trace
        self.log = log
        n = max((r.rid for r in requests), default=-1) + 1
        nan = math.nan
        self.record = RunRecord(
            arrival_s=[nan] * n, first_token_s=[nan] * n, finish_s=[nan] * n, tokens=[0] * n,
            stages=[[StageStats() for _ in p.stages] for p in pipelines],
            kv_peak_blocks=[0] * len(pipelines))
        self.kv = [KvPool(blocks) for blocks in kv_blocks]
        # router weights (only with a choice: the reference step adds provenance)
        self.speed = [pipeline_speed(p) for p in pipelines] if len(pipelines) > 1 else [1.0]
        self.lanes: list[list[Lane]] = []
        self._idle: dict[tuple[int, int], simpy.Event] = {}
        self._stage_res: list[list[simpy.Resource]] = []
        self._link_res: list[list[simpy.Resource]] = []
        for i, pipe in enumerate(pipelines):
            lanes = [Lane(self.kv[i], scheduler.max_running, scheduler.max_prefill_tokens,
                          scheduler.kv_block_tokens) for _ in range(pipe.micro_batches)]
            self.lanes.append(lanes)
            self._stage_res.append([simpy.Resource(self.env) for _ in pipe.stages])
            self._link_res.append([simpy.Resource(self.env) for _ in pipe.hops])

    def run(self) -> RunRecord:
        env = self.env
        env.process(self._source())
        for i, lanes in enumerate(self.lanes):
            for k in range(len(lanes)):
                env.process(self._lane(i, k))
        env.run()
        rec = self.record
        rec.end_s = env.now
        rec.kv_peak_blocks = [kv.peak for kv in self.kv]
        return rec

    # ---- processes -----------------------------------------------------------------
    def _source(self):
        env, rec, log = self.env, self.record, self.log
        for req in self.requests:
            if req.arrival_s > env.now:
                yield env.timeout(req.arrival_s - env.now)
            rec.arrival_s[req.rid] = req.arrival_s
            # the pipeline that would finish its queue first: load over speed (HexGen's
            # pipelines of different GPUs and TP degrees serve at different rates)
            i = min(range(len(self.lanes)),
                    key=lambda p: (sum(lane.unfinished for lane in self.lanes[p]) + 1)
                    / self.speed[p])
            lanes = self.lanes[i]
            k = min(range(len(lanes)), key=lambda q: lanes[q].unfinished)
            lanes[k].add(req)
            if log is not None:
                log.append((env.now, "arrive", req.rid, i, k))
            self._wake(i, k)

    def _lane(self, i: int, k: int):
        env, rec, log = self.env, self.record, self.log
        lane, pipe = self.lanes[i][k], self.pipelines[i]
        contended = self._contended(pipe)
        n_stages = len(pipe.stages)
        while True:
            batch = lane.next_batch()
            if batch is None:
                event = self._idle[(i, k)] = env.event()
                yield event
                continue
            if log is not None:
                log.append((env.now, "step", i, k, batch.decode_n, batch.prefill_tokens))
            times, comms, sends = pipe.step(batch)
            if pipe.lead_s:  # the plan's trip to the earlier stages (holds nothing)
                yield env.timeout(pipe.lead_s)
            for s in range(n_stages):
                if contended:
                    yield from self._run_stage(i, s, k, batch, times[s], comms[s])
                else:
                    start = env.now
                    if log is not None:
                        log.append((start, "stage_start", i, s, k))
                    yield env.timeout(times[s])
                    self._account(i, s, k, batch, start, times[s], comms[s])
                if s < n_stages - 1:
                    yield from self._send(i, s, k, sends[s])
            out = lane.complete()
            rec.steps += 1
            rec.tokens_emitted += out.tokens
            now = env.now
            for rid in out.first_token:
                rec.first_token_s[rid] = now
                if log is not None:
                    log.append((now, "first_token", rid))
            for rid, tokens in out.finished:
                rec.finish_s[rid] = now
                rec.tokens[rid] = tokens
                if log is not None:
                    log.append((now, "finish", rid, tokens))
            if out.freed_blocks:
                for q in range(len(self.lanes[i])):
                    if q != k and self.lanes[i][q].waiting:
                        self._wake(i, q)

    def _contended(self, pipe: PipelineModel) -> bool:
        """Whether a lane's steps can wait for a resource (a stage, a link, a pool)."""
        return len(pipe.stages) > 1 or pipe.micro_batches > 1

    def _run_stage(self, i: int, s: int, k: int, batch: StepBatch, time_s: float,
                   comm_s: float):
        """Hold stage ``s`` of pipeline ``i`` for one step of lane ``k``."""
        env = self.env
        with self._stage_res[i][s].request() as req:
            yield req
            start = env.now
            if self.log is not None:
                self.log.append((start, "stage_start", i, s, k))
            yield from self._occupy(i, s, k, batch, time_s)
        self._account(i, s, k, batch, start, time_s, comm_s)

    def _occupy(self, i: int, s: int, k: int, batch: StepBatch, time_s: float):
        """The step's work while its stage is held (a layout may add shared resources)."""
        yield self.env.timeout(time_s)

    def _send(self, i: int, s: int, k: int, send_s: float):
        env = self.env
        with self._link_res[i][s].request() as req:
            yield req
            yield env.timeout(send_s)
        self.record.stages[i][s].send_s += send_s
        if self.log is not None:
            self.log.append((env.now, "sent", i, s, k))

    def _account(self, i: int, s: int, k: int, batch: StepBatch, start: float, time_s: float,
                 comm_s: float) -> None:
        stats = self.record.stages[i][s]
        stats.busy_s += time_s
        stats.comm_s += comm_s
        stats.steps += 1
        if self.log is not None:
            self.log.append((self.env.now, "stage_end", i, s, k))
        if self.trace:
            self.record.trace.append((i, s, k, start, time_s, batch.decode_n,
                                      batch.prefill_tokens, comm_s))

    def _wake(self, i: int, k: int) -> None:
        event = self._idle.pop((i, k), None)
        if event is not None and not event.triggered:
            event.succeed()
