"""Timing one operation: warm-up, repeated runs, the median, and L2 rotation.

On CUDA every repetition sits between its own pair of CUDA events, and a GPU-side
spin (``torch.cuda._sleep``) is queued first so that the host enqueues all
repetitions while the GPU waits: the events then bracket back-to-back kernels and
measure device time, not Python's launch speed (host overhead is fitted separately
from the executor's timeline, see ``overheads``). On CPU, ``time.perf_counter``.

A working set that fits in the last-level cache would be timed hot, while inference
reads weights and KV from DRAM/HBM every step. ``rotations`` gives the number of
input copies to cycle through so that successive repetitions touch different memory
(as ``triton.testing.do_bench`` flushes L2 for the same reason).

``measure_graphed`` times an operation as it runs back to back with others: inside a
CUDA graph, as the executor's decode steps replay it, in which kernels start without
the gap an eager launch between two events leaves (decode attention on an H100 at batch
1 and 4K: 19.3 us timed eagerly, 16.5 us per layer in a 32-layer graph;
docs/BENCHMARKS.md). The executor's prefill runs eagerly but, once its kernels outlast
their launches, the GPU works through a queue of them, again without that gap: summed
event-timed kernels overstated a 512-token prefill on an H100 by 0.77 ms of 12.48
(docs/VALIDATION.md). An operation of ``GRAPH_BELOW_S`` or more is timed between events
instead, where a few microseconds of gap are under 0.3% and 32 captured launches would
only hold memory.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

GRAPH_BELOW_S = 1e-3  # measure_graphed times longer operations between events
SPIN_CYCLES = 8_000_000  # ~4 ms at a 2 GHz GPU clock: room to enqueue 50 repetitions
MAX_ROTATIONS = 32


@dataclass(frozen=True)
class TimingConfig:
    """How hard to time each point."""

    warmup: int = 2
    min_reps: int = 5
    max_reps: int = 50
    target_s: float = 0.05  # measured time per point the rep count aims at

    @classmethod
    def quick(cls) -> TimingConfig:
        return cls(warmup=1, min_reps=5, max_reps=15, target_s=0.01)


def cache_bytes(device: torch.device) -> int:
    """L2 size of a CUDA device, or the last-level cache of the CPU (32 MiB if unknown)."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return int(getattr(props, "L2_cache_size", 50 << 20))
    best = 0
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        best = max(best, int(text.rstrip("KMG") or 0) * scale)
    return best or 32 << 20


def rotations(working_set_bytes: int, cache_size_bytes: int) -> int:
    """Input copies to cycle through so that the total is >= 3x the cache (at most 32)."""
    if working_set_bytes <= 0 or working_set_bytes >= 2 * cache_size_bytes:
        return 1
    return min(MAX_ROTATIONS, math.ceil(3 * cache_size_bytes / working_set_bytes))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_cpu(run: Callable[[int], object], reps: int) -> list[float]:
    times_s = []
    for i in range(reps):
        start = time.perf_counter()
        run(i)
        times_s.append(time.perf_counter() - start)
    return times_s


def _time_cuda(run: Callable[[int], object], reps: int) -> list[float]:
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    spin = getattr(torch.cuda, "_sleep", None)
    if spin is not None and reps > 1:
        spin(SPIN_CYCLES)
    for i in range(reps):
        starts[i].record()
        run(i)
        ends[i].record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) * 1e-3 for s, e in zip(starts, ends, strict=True)]


def measure(run: Callable[[int], object], device: torch.device, cfg: TimingConfig) -> float:
    """Median time in seconds of ``run(i)`` (i = repetition index, for rotation)."""
    timer = _time_cuda if device.type == "cuda" else _time_cpu
    for i in range(cfg.warmup):
        run(i)
    sync(device)
    probe = min(timer(run, 1)[0] for _ in range(3))  # a lone probe may catch a hiccup
    reps = int(min(cfg.max_reps, max(cfg.min_reps, cfg.target_s / max(probe, 1e-7))))
    return statistics.median(timer(run, reps))


def measure_graphed(run: Callable[[int], object], device: torch.device, cfg: TimingConfig,
                    launches: int = MAX_ROTATIONS, eager_from_s: float = GRAPH_BELOW_S) -> float:
    """Median time in seconds of one ``run(i)`` inside a CUDA graph: ``launches`` calls
    (i = 0 .. launches - 1, so that the graph cycles through up to that many rotation
    copies) are captured once, the graph is replayed as ``measure`` times one call, and
    its time is divided by ``launches``. Off CUDA, or where one call between events
    takes ``eager_from_s`` or more, ``measure``."""
    if device.type != "cuda":
        return measure(run, device, cfg)
    side = torch.cuda.Stream(device)  # warm up (compile, lazy buffers) off the capture
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for i in range(max(cfg.warmup, 1)):
            run(i)
    torch.cuda.current_stream(device).wait_stream(side)
    sync(device)
    if min(_time_cuda(run, 1)[0] for _ in range(2)) >= eager_from_s:
        return measure(run, device, cfg)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(launches):
            run(i)
    sync(device)
    return measure(lambda _: graph.replay(), device, cfg) / launches


def median_s(samples: Sequence[float]) -> float:
    return float(statistics.median(samples))
