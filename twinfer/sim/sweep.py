"""A layout against a scenario's ``baseline`` over its ``sweep`` (e.g. sequence length).

For every swept value (``sweep.prompt_tokens``, ``output_tokens`` or ``requests``)
the scenario and its baseline layout are simulated on the same requests, and the
ratios reported: TPOT speedup = baseline TPOT / layout TPOT, TPS gain = layout TPS /
baseline TPS (above 1: the layout is better).

Two views, because they answer different questions:

- **served**: the SimPy engine's per-request TPOT (mean) and TPS over the whole run,
  prefill included; with many requests arriving together a request's decode steps
  share the GPUs with other requests' prompts, and that counts;
- **decode**: the steady-state decode step of the full batch at the mean context
  (prompt + half the output), prefill excluded: TPOT is the step period, TPS the
  batch over it. This is the number a paper measuring "TPOT at 16K tokens" reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil

from twinfer.sim.simulate import simulate
from twinfer.sim.stage import StepBatch
from twinfer.sim.twin import ProfilesArg, Twin, build_twin
from twinfer.spec.scenario import Scenario

SWEPT_FIELDS = ("prompt_tokens", "output_tokens", "requests")


@dataclass(frozen=True)
class Metrics:
    tpot_s: float  # served: mean per-request TPOT
    tps: float  # served: output tokens per second
    ttft_s: float
    decode_tpot_s: float  # steady-state decode step period
    decode_tps: float
    num_gpus: int


@dataclass(frozen=True)
class SweepPoint:
    field: str
    value: int | str  # the swept value, or the workload's distribution when not swept
    layout: Metrics
    baseline: Metrics | None

    def ratio(self, metric: str) -> float | None:
        """Layout over baseline, oriented so that above 1 means the layout is better."""
        if self.baseline is None:
            return None
        a, b = getattr(self.layout, metric), getattr(self.baseline, metric)
        return b / a if metric.endswith("_s") else a / b


def decode_step(twin: Twin) -> tuple[float, float]:
    """(step period s, tokens/s) of every pipeline decoding its share of the requests
    at once, at the mean context; each pipeline's lanes split its share."""
    reqs = twin.requests
    sched = twin.scenario.scheduler
    n_pipes = len(twin.pipelines)
    ctx = sum(r.prompt_tokens + r.output_tokens / 2 for r in reqs) / len(reqs)
    per_seq_blocks = ceil((ctx + max(r.output_tokens for r in reqs) / 2) / sched.kv_block_tokens)
    worst, tps = 0.0, 0.0
    for pipe, mem in zip(twin.pipelines, twin.memory, strict=True):
        lanes = pipe.micro_batches
        fit = max(1, mem.kv_blocks // lanes // per_seq_blocks)
        seqs = max(1, min(ceil(len(reqs) / n_pipes / lanes), sched.max_running, fit))
        period, *_ = pipe.period(StepBatch(seqs, round(seqs * ctx), (), 0, seqs))
        worst = max(worst, period)
        tps += lanes * seqs / period
    return worst, tps


def metrics(scenario: Scenario, profiles: ProfilesArg = None) -> Metrics:
    result = simulate(scenario, profiles)
    twin = build_twin(scenario, profiles)
    step_s, step_tps = decode_step(twin)
    return Metrics(result.tpot_s.mean, result.tps, result.ttft_s.mean, step_s, step_tps,
                   result.num_gpus)


def _variants(scenario: Scenario) -> list[tuple[str, int | str, Scenario]]:
    sweep = scenario.sweep
    points = []
    if sweep is not None:
        for name in SWEPT_FIELDS:
            for value in getattr(sweep, name):
                wl = scenario.workload.model_copy(update={name: value})
                points.append((name, value, scenario.model_copy(update={"workload": wl})))
    if not points:
        value = scenario.workload.prompt_tokens
        points.append(("prompt_tokens", value if isinstance(value, int) else value.dist,
                       scenario))
    return points


def sweep_compare(scenario: Scenario, profiles: ProfilesArg = None) -> list[SweepPoint]:
    """Layout and baseline metrics at every swept value (one point if none)."""
    out = []
    for name, value, sc in _variants(scenario):
        base = (metrics(sc.with_layout(scenario.baseline), profiles)
                if scenario.baseline is not None else None)
        out.append(SweepPoint(name, value, metrics(sc, profiles), base))
    return out


def sweep_rows(points: list[SweepPoint]) -> tuple[list[str], list[list[str]]]:
    """A table of the comparison: (header, rows) of strings."""
    header = ["field", "value", "GPUs", "TPOT ms", "base TPOT ms", "TPOT x", "TPS",
              "base TPS", "TPS x", "decode TPOT x", "decode TPS x"]
    rows = []
    for p in points:
        b = p.baseline

        def x(metric: str, point: SweepPoint = p) -> str:
            r = point.ratio(metric)
            return "-" if r is None else f"{r:.2f}"

        rows.append([p.field, str(p.value),
                     f"{p.layout.num_gpus}" + (f" vs {b.num_gpus}" if b else ""),
                     f"{p.layout.tpot_s * 1e3:.2f}", f"{b.tpot_s * 1e3:.2f}" if b else "-",
                     x("tpot_s"), f"{p.layout.tps:.0f}", f"{b.tps:.0f}" if b else "-",
                     x("tps"), x("decode_tpot_s"), x("decode_tps")])
    return header, rows


def print_sweep(console, scenario: Scenario, profiles: ProfilesArg = None) -> None:
    """Print the comparison table when the scenario has a baseline or a sweep."""
    if scenario.baseline is None and scenario.sweep is None:
        return
    from rich.table import Table

    header, rows = sweep_rows(sweep_compare(scenario, profiles))
    base = "" if scenario.baseline is None else f" vs baseline {scenario.baseline.kind}"
    table = Table(title=f"{scenario.name}: {scenario.layout.kind}{base} (x: above 1, "
                        "the layout is better; decode: steady-state step, prefill excluded)")
    for col in header:
        table.add_column(col, justify="left" if col == "field" else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
