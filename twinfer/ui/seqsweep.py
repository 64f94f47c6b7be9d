"""TPOT and TPS against sequence length for several layouts of one scenario.

For each layout and prompt length the scenario is predicted twice, as
``twinfer.sim.sweep`` does for a scenario's baseline:

- **decode**: the steady-state decode step of the whole batch at the mean context
  (``sweep.decode_step``), prefill excluded: what a paper reporting "TPOT at 16K
  tokens" measures, and where the FA Pool crossover against a static layout shows;
- **served**: the closed-form fast path (``twinfer.sim.fast.estimate``) over the
  whole workload, prefill included: mean TPOT and output tokens per second.

The fast path rather than the SimPy engine keeps a what-if change under a second;
the engine's numbers for the scenario itself are on the page above the chart. A
point that cannot run (does not fit in memory, longer than the model's positions)
carries its one-line reason instead of numbers. Imports no streamlit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from twinfer.sim.candidates import SearchSpace, enumerate_layouts
from twinfer.sim.fast import estimate
from twinfer.sim.search import gpu_types
from twinfer.sim.sweep import decode_step
from twinfer.sim.twin import SIMULATED_KINDS, build_twin
from twinfer.spec import Scenario, SpecError
from twinfer.ui.editor import layout_label

DEFAULT_LENGTHS = (256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
MAX_ALTERNATIVES = 40
KIND_ORDER = {"uniform": 0, "kv_sharded": 1, "fa_pool": 2, "hetero": 3}


@dataclass(frozen=True)
class SeqPoint:
    layout: str
    prompt_tokens: int
    decode_tpot_s: float = math.nan
    decode_tps: float = math.nan
    tpot_s: float = math.nan
    tps: float = math.nan
    ttft_s: float = math.nan
    error: str = ""


def _dump(layout: object) -> dict:
    return layout.model_dump(mode="json", exclude_none=True)  # type: ignore[attr-defined]


def seq_lengths(scenario: Scenario) -> list[int]:
    """The scenario's swept prompt lengths, else powers of two up to what fits the
    model's positions with the workload's output."""
    sweep = scenario.sweep
    if sweep is not None and sweep.prompt_tokens:
        return list(sweep.prompt_tokens)
    out = scenario.workload.output_tokens
    out_max = out if isinstance(out, int) else getattr(out, "max", 0)
    room = scenario.model.max_position - out_max
    return [n for n in DEFAULT_LENGTHS if n <= room] or [max(1, room)]


def layout_choices(scenario: Scenario) -> dict[str, dict]:
    """Label -> layout mapping: the scenario's layout, its baseline, then alternatives
    on the same cluster (``twinfer.sim.candidates``), simplest kinds first."""
    choices = {f"{layout_label(_dump(scenario.layout))} (scenario)": _dump(scenario.layout)}
    if scenario.baseline is not None:
        choices[f"{layout_label(_dump(scenario.baseline))} (baseline)"] = \
            _dump(scenario.baseline)
    try:
        space = SearchSpace(kinds=SIMULATED_KINDS)
        found = enumerate_layouts(scenario.model, scenario.cluster, gpu_types(scenario), space)
    except SpecError:
        found = []
    found = sorted(found, key=lambda lay: KIND_ORDER.get(lay.kind, 9))
    seen = {layout_label(v) for v in choices.values()}
    for layout in found:
        if len(choices) >= MAX_ALTERNATIVES:
            break
        doc = _dump(layout)
        label = layout_label(doc)
        if label not in seen:
            seen.add(label)
            choices[label] = doc
    return choices


def default_selection(choices: dict[str, dict]) -> list[str]:
    """The scenario's layout and baseline; without a baseline, the scenario's layout
    and the first two alternatives of other shapes."""
    labels = list(choices)
    marked = [k for k in labels if k.endswith("(scenario)") or k.endswith("(baseline)")]
    if len(marked) > 1:
        return marked
    return labels[:3]


def predict_point(scenario: Scenario, label: str, layout: dict, prompt_tokens: int) -> SeqPoint:
    """Both views of one layout at one prompt length."""
    try:
        sc = scenario.with_layout(layout)
        work = sc.workload.model_copy(update={"prompt_tokens": prompt_tokens})
        sc = sc.model_copy(update={"workload": work, "sweep": None, "baseline": None})
        step_s, step_tps = decode_step(build_twin(sc))
        served = estimate(sc)
    except SpecError as exc:
        return SeqPoint(label, prompt_tokens, error=str(exc))
    return SeqPoint(label, prompt_tokens, step_s, step_tps, served.tpot_s.mean, served.tps,
                    served.ttft_s.mean)


def seq_sweep(scenario: Scenario, layouts: dict[str, dict],
              lengths: list[int]) -> list[SeqPoint]:
    """Every (layout, length) point, layouts in the order given."""
    return [predict_point(scenario, label, layout, n)
            for label, layout in layouts.items() for n in lengths]


def crossover(points: list[SeqPoint], a: str, b: str, metric: str = "decode_tpot_s") -> int | None:
    """The first prompt length from which layout ``a`` beats layout ``b`` on ``metric``
    (lower is better for times, higher for throughputs) and stays ahead; None if never."""
    lower = metric.endswith("_s")
    by_len: dict[int, dict[str, float]] = {}
    for p in points:
        by_len.setdefault(p.prompt_tokens, {})[p.layout] = getattr(p, metric)
    lengths = sorted(n for n, v in by_len.items() if a in v and b in v
                     and math.isfinite(v[a]) and math.isfinite(v[b]))
    wins = [(by_len[n][a] < by_len[n][b]) if lower else (by_len[n][a] > by_len[n][b])
            for n in lengths]
    for i, n in enumerate(lengths):
        if all(wins[i:]):
            return n
    return None
