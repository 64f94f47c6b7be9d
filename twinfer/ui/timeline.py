"""The simulated timeline as Gantt bars, read from the SimPy engine's event log.

``simulate(scenario, log=[...])`` fills the log with ``(time_s, event, *details)``
tuples (``twinfer.sim.engine``). A stage's step runs from ``stage_start`` to
``stage_end``; the lane's latest ``step`` event says what the step carried (prefill
tokens, decode sequences); an FA Pool step holds pool GPUs from ``pool_start`` to its
``stage_end``. A send to the next stage is requested at ``stage_end`` and logged when
done (``sent``); the link is a first-come first-served resource, so the send began
at the later of its request and the link's previous send. Imports no streamlit.
"""

from __future__ import annotations

from dataclasses import dataclass

from twinfer.spec import Scenario

KINDS = ("prefill", "mixed", "decode", "pool", "send")


@dataclass(frozen=True)
class Bar:
    row: str
    start_s: float
    dur_s: float
    kind: str  # one of KINDS
    label: str


def _gpu_span(gpus: tuple[int, ...]) -> str:
    if len(gpus) == 1:
        return f"GPU {gpus[0]}"
    if list(gpus) == list(range(gpus[0], gpus[0] + len(gpus))):
        return f"GPUs {gpus[0]}-{gpus[-1]}"
    return "GPUs " + ",".join(map(str, gpus))


def row_names(scenario: Scenario) -> tuple[dict[tuple[int, int, int], str], dict]:
    """Row labels of stage steps ``(pipeline, stage, lane)`` and of links
    ``(pipeline, stage)``, in display order."""
    placement = scenario.placement()
    stages, links = {}, {}
    for i, pipe in enumerate(placement.pipelines):
        for s, stage in enumerate(pipe.stages):
            for k in range(pipe.micro_batches):
                lane = f" mb{k}" if pipe.micro_batches > 1 else ""
                stages[(i, s, k)] = f"p{i} s{s}{lane} ({_gpu_span(stage.gpus)})"
            if s < len(pipe.stages) - 1:
                links[(i, s)] = f"p{i} link s{s}->s{s + 1}"
    return stages, links


def bars_from_log(scenario: Scenario, log: list[tuple]) -> list[Bar]:
    """Every stage step, pool use and stage-to-stage send of a run, in log order."""
    stage_rows, link_rows = row_names(scenario)
    carried: dict[tuple[int, int], tuple[int, int]] = {}
    started: dict[tuple[int, int, int], float] = {}
    pooled: dict[tuple[int, int, int], tuple[float, int]] = {}
    ready: dict[tuple[int, int, int], float] = {}
    link_free: dict[tuple[int, int], float] = {}
    bars: list[Bar] = []
    for time_s, event, *d in log:
        if event == "step":
            i, k, decode_n, prefill_tokens = d
            carried[(i, k)] = (decode_n, prefill_tokens)
        elif event == "stage_start":
            started[tuple(d)] = time_s
        elif event == "pool_start":
            pooled[tuple(d[:3])] = (time_s, d[3])
        elif event == "stage_end":
            key = tuple(d)
            i, s, k = key
            start = started.pop(key, time_s)
            decode_n, prefill = carried.get((i, k), (0, 0))
            kind = "mixed" if prefill and decode_n else "prefill" if prefill else "decode"
            label = (f"prefill {prefill} tok" if prefill else "") + \
                (" + " if prefill and decode_n else "") + \
                (f"decode {decode_n} seq" if decode_n else "")
            bars.append(Bar(stage_rows.get(key, f"p{i} s{s}"), start, time_s - start,
                            kind, label))
            if key in pooled:
                pool_start, gpus = pooled.pop(key)
                bars.append(Bar("FA pool", pool_start, time_s - pool_start, "pool",
                                f"{gpus} pool GPUs for p{i} s{s} mb{k}"))
            ready[key] = time_s
        elif event == "sent":
            key = tuple(d)
            i, s, _k = key
            begin = max(ready.pop(key, time_s), link_free.get((i, s), 0.0))
            link_free[(i, s)] = time_s
            bars.append(Bar(link_rows.get((i, s), f"p{i} link s{s}"), begin, time_s - begin,
                            "send", f"activations p{i} s{s}->s{s + 1}"))
    return bars


def row_order(scenario: Scenario, bars: list[Bar]) -> list[str]:
    """Rows top to bottom: each pipeline's stages (lanes) with its links between."""
    stage_rows, link_rows = row_names(scenario)
    order = []
    for (i, s, k), name in stage_rows.items():
        order.append(name)
        last_lane = max(lane for (a, b, lane) in stage_rows if (a, b) == (i, s))
        if (i, s) in link_rows and k == last_lane:
            order.append(link_rows[(i, s)])
    present = {b.row for b in bars}
    if "FA pool" in present:
        order.append("FA pool")
    return [r for r in order if r in present]
