"""Per-step timing of one rank, split into compute, communication and waiting.

A step is one rank's share of one pipeline step (one micro-batch's prefill or decode
through this rank's stage). Three intervals are timed inside it:

- ``comm_s``: the stage's collectives (TP all-reduces, the logits all-gather) and the
  send of activations to the next stage;
- ``wait_s``: receiving activations from the previous stage (includes the previous
  stage's compute: it is the pipeline bubble seen by this rank, plus the transfer);
- ``compute_s``: the rest of the step's span.

``host_s`` is the host's side of the same step: ``time.perf_counter`` from its begin to
its end mark, i.e. how long Python took to enqueue the step (on CPU, to run it). A GPU
step whose ``host_s`` is close to its ``span_s`` was paced by the host (the GPU waited
for launches); one whose ``host_s`` is far below was paced by the GPU. ``host_begin_s``
is the begin mark's raw ``perf_counter`` (the host's monotonic clock, the same for
every rank of one node), so that the ranks' timelines can be laid side by side.
``host_cpu_s`` is the rank's thread CPU time over the same interval: a ``host_s`` well
above it is time the thread did not run (descheduled by another process on its core,
or blocked in a receive), one close to it is the CPU working that long.

On CUDA, intervals are CUDA event pairs on the current stream (the time the GPU spent,
not the time Python took to enqueue); events come from a pool and are read back lazily,
a few dozen steps later, so timing adds no synchronization. On CPU they are
``time.perf_counter`` intervals around blocking calls. A decode step replayed from a
CUDA graph has no per-collective events inside the graph: its ``comm_s`` is None and
its ``compute_s`` includes the collectives (``wait_s``, outside the graph, is measured).
"""

from __future__ import annotations

import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

LAG_STEPS = 32  # read CUDA events back this many steps later (long finished by then)


@dataclass
class _Pending:
    step: int
    graphed: bool
    host_start: float = 0.0
    host_s: float = 0.0  # perf_counter from begin to end: the host's enqueue time
    cpu_start: float = 0.0
    host_cpu_s: float = 0.0  # this thread's CPU time over the same interval
    span: list = field(default_factory=list)  # [start, end]: events or floats
    comm: list = field(default_factory=list)  # [(start, end), ...]
    wait: list = field(default_factory=list)


class StepTimer:
    """Collects {step, compute_s, comm_s, wait_s, span_s} records for one rank."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._pool: list[torch.cuda.Event] = []
        self._open: _Pending | None = None
        self._pending: deque[_Pending] = deque()
        self.records: list[dict] = []

    # ---- marks ---------------------------------------------------------------------
    def _mark(self) -> object:
        if not self.cuda:
            return time.perf_counter()
        ev = self._pool.pop() if self._pool else torch.cuda.Event(enable_timing=True)
        ev.record()
        return ev

    def begin(self, step: int, graphed: bool = False) -> None:
        self._open = _Pending(step, graphed, time.perf_counter(), cpu_start=time.thread_time())
        self._open.span.append(self._mark())

    def end(self) -> None:
        pending, self._open = self._open, None
        if pending is None:
            return
        pending.span.append(self._mark())
        pending.host_s = time.perf_counter() - pending.host_start
        pending.host_cpu_s = time.thread_time() - pending.cpu_start
        self._pending.append(pending)
        if not self.cuda or len(self._pending) > LAG_STEPS:
            self._resolve(1 if self.cuda else len(self._pending))

    @contextmanager
    def comm(self):
        """Time a collective or a send (skipped outside a step, e.g. in warm-up)."""
        with self._interval("comm"):
            yield

    @contextmanager
    def wait(self):
        """Time a blocking receive of the previous stage's activations."""
        with self._interval("wait"):
            yield

    @contextmanager
    def _interval(self, kind: str):
        step = self._open
        if step is None or (self.cuda and torch.cuda.is_current_stream_capturing()):
            yield
            return
        start = self._mark()
        yield
        getattr(step, kind).append((start, self._mark()))

    # ---- read back -----------------------------------------------------------------
    def _elapsed(self, pair: tuple) -> float:
        start, end = pair
        if not self.cuda:
            return end - start
        end.synchronize()
        seconds = start.elapsed_time(end) / 1e3
        self._pool += [start, end]
        return seconds

    def _resolve(self, count: int) -> None:
        for _ in range(min(count, len(self._pending))):
            p = self._pending.popleft()
            comm = sum(self._elapsed(x) for x in p.comm)
            wait = sum(self._elapsed(x) for x in p.wait)
            span = self._elapsed(tuple(p.span))
            self.records.append({
                "step": p.step,
                "span_s": span,
                "compute_s": span - wait - (0.0 if p.graphed else comm),
                "comm_s": None if p.graphed else comm,
                "wait_s": wait,
                "host_s": p.host_s,
                "host_cpu_s": p.host_cpu_s,
                "host_begin_s": p.host_start,
            })

    def flush(self) -> list[dict]:
        """Read back every finished step; returns all records so far."""
        self._resolve(len(self._pending))
        return self.records
