"""The simulated timeline as a Chrome trace (opens in Perfetto or chrome://tracing).

Trace Event Format: one complete event (``ph: "X"``, microseconds) per GPU per stage
step, with the GPU as the process (``pid``) and the micro-batch lane as the thread
(``tid``); metadata events name each process ``GPU <id> (<type>)``.
"""

from __future__ import annotations

from pathlib import Path

from twinfer.sim.engine import RunRecord
from twinfer.sim.twin import Twin
from twinfer.spec.io import write_json_atomic

US = 1e6


def chrome_trace(twin: Twin, record: RunRecord) -> dict:
    """The trace as a JSON-ready dict: ``{"traceEvents": [...], "displayTimeUnit": "ms"}``."""
    cluster = twin.scenario.cluster
    events: list[dict] = []
    for i, pipe in enumerate(twin.pipelines):
        for s, ids in enumerate(pipe.gpus):
            for g in ids:
                events.append({"name": "process_name", "ph": "M", "pid": g, "tid": 0,
                               "args": {"name": f"GPU {g} ({cluster.gpu_type(g)}) "
                                                f"pipeline {i} stage {s}"}})
    for i, s, lane, start, dur, decode_n, prefill_tokens, comm_s in record.trace:
        name = (f"prefill {prefill_tokens} + decode {decode_n}" if prefill_tokens
                else f"decode {decode_n}")
        args = {"lane": lane, "decode": decode_n, "prefill_tokens": prefill_tokens,
                "comm_us": round(comm_s * US, 3)}
        for g in twin.pipelines[i].gpus[s]:
            events.append({"name": name, "cat": "step", "ph": "X", "pid": g, "tid": lane,
                           "ts": round(start * US, 3), "dur": round(dur * US, 3),
                           "args": args})
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def write_chrome_trace(path: Path, twin: Twin, record: RunRecord) -> Path:
    write_json_atomic(path, chrome_trace(twin, record))
    return path
