"""Simulated versus measured for the Sim vs real page: executor results JSONs found in
the repository (the shipped validation set) or dropped in by the user, each put
through ``twinfer.compare``, and the tables and figures of their errors.

The relative error is ``(predicted - measured) / measured`` (``Comparison.errors``).
Imports no streamlit.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from twinfer.compare import METRICS, TABLE_METRICS, Comparison

REPO = Path(__file__).resolve().parents[2]
SEARCHED = ("docs", "validation")  # where shipped results JSONs may live (recursively)
RESULTS_SCHEMA = "twinfer.exec.results/"
# Issue targets: TPOT median 3% / worst 10%, TTFT median 5% / worst 15%.
TARGETS = {"tpot": (0.03, 0.10), "ttft": (0.05, 0.15)}
PALETTE = ["#4C78A8", "#E45756", "#54A24B", "#F58518", "#B279A2", "#72B7B2", "#9D755D",
           "#EECA3B", "#FF9DA6"]


def is_results(data: bytes) -> bool:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(doc, dict) and str(doc.get("schema", "")).startswith(RESULTS_SCHEMA)


def shipped_results(root: Path | None = None) -> list[Path]:
    """Executor results JSONs committed under docs/ or validation/ (sorted), except
    those under an ``overheads`` folder: the runs the profile's overheads were fitted
    to (``twinfer.calibration.campaign``) are not a test of the twin."""
    root = root or REPO
    found = []
    for top in SEARCHED:
        folder = root / top
        if folder.is_dir():
            found += [p for p in folder.rglob("*.json") if "overheads" not in p.parts
                      and p.stat().st_size < 64 << 20 and is_results(p.read_bytes())]
    return sorted(set(found))


def device_type(path: Path) -> str:
    """The device kind a results JSON was measured on ("cpu", "cuda", ...)."""
    try:
        return str(json.loads(path.read_bytes()).get("device", {}).get("type", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def default_groups(groups: dict[str, list[Path]]) -> list[str]:
    """The folders measured on GPUs (CPU runs check the plumbing, not the twin's
    accuracy), or every folder when none is."""
    gpu = [g for g, paths in groups.items() if device_type(paths[0]) not in ("", "cpu")]
    return gpu or list(groups)


@dataclass(frozen=True)
class Run:
    """One compared executor run and the set it belongs to (its folder, or
    "uploaded")."""

    group: str
    comparison: Comparison

    @property
    def label(self) -> str:
        c = self.comparison
        return f"{c.device} {c.layout} b{c.requests} c{c.prompt_tokens}"


def runs_table(runs: list[Run]) -> pd.DataFrame:
    """One row per run: what ran, and measured / predicted / error of the key metrics."""
    rows = []
    for run in runs:
        c = run.comparison
        err = c.errors()
        row = {"set": run.group, "run": run.label, "file": Path(c.source).name,
               "model": c.model, "profile": c.profile}
        for key in TABLE_METRICS:
            scale, unit = (1.0, "") if key == "tps" else (1e3, " ms")
            name = key.removesuffix("_s").replace("_", " ")
            row[f"{name} meas{unit}"] = c.measured.get(key, math.nan) * scale
            row[f"{name} pred{unit}"] = c.predicted.get(key, math.nan) * scale
            row[f"{name} err %"] = 100 * err[key]
        rows.append(row)
    return pd.DataFrame(rows)


def long_errors(runs: list[Run]) -> pd.DataFrame:
    """Every (run, metric) with a finite error: measured, predicted, relative error."""
    rows = []
    for run in runs:
        c = run.comparison
        err = c.errors()
        for key in METRICS:
            if math.isfinite(err[key]):
                rows.append({"set": run.group, "run": run.label, "metric": key,
                             "measured": c.measured[key], "predicted": c.predicted[key],
                             "error": err[key]})
    return pd.DataFrame(rows, columns=["set", "run", "metric", "measured", "predicted",
                                       "error"])


def summary_table(runs: list[Run]) -> pd.DataFrame:
    """Per set and key metric: median and worst absolute error, and the target."""
    errs = long_errors(runs)
    rows = []
    for group in dict.fromkeys(r.group for r in runs):
        for key in TABLE_METRICS:
            e = errs.loc[(errs.set == group) & (errs.metric == key), "error"].abs().to_numpy()
            if e.size == 0:
                continue
            target = TARGETS.get(key.split("_")[0])
            rows.append({"set": group, "metric": key.removesuffix("_s"), "runs": int(e.size),
                         "median %": 100 * np.median(e), "worst %": 100 * e.max(),
                         "target": f"{target[0]:.0%} / {target[1]:.0%}" if target else "-"})
    return pd.DataFrame(rows)


def _colors(errs: pd.DataFrame) -> dict[str, str]:
    return {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(dict.fromkeys(errs.set))}


def scatter_figure(runs: list[Run], metric: str) -> go.Figure:
    """Predicted against measured for one metric, every run a point coloured by its
    set; the diagonal and a band of +-10%."""
    errs = long_errors(runs)
    sel = errs[errs.metric == metric]
    scale = 1.0 if metric == "tps" else 1e3
    unit = "tokens/s" if metric == "tps" else "ms"
    fig = go.Figure()
    if not sel.empty:
        lo = min(sel.measured.min(), sel.predicted.min()) * scale * 0.8
        hi = max(sel.measured.max(), sel.predicted.max()) * scale * 1.25
        xs = np.geomspace(lo, hi, 16)
        for f, name, dash in ((1.0, "exact", "solid"), (1.1, "+10%", "dot"),
                              (0.9, "-10%", "dot")):
            fig.add_scatter(x=xs, y=xs * f, mode="lines", name=name, hoverinfo="skip",
                            line=dict(color="gray", dash=dash, width=1))
        for group, color in _colors(sel).items():
            part = sel[sel.set == group]
            fig.add_scatter(x=part.measured * scale, y=part.predicted * scale, mode="markers",
                            name=group, marker=dict(size=10, color=color),
                            customdata=np.stack([part.run, 100 * part.error], axis=1),
                            hovertemplate="%{customdata[0]}<br>measured %{x:.4g}<br>predicted"
                                          " %{y:.4g}<br>error %{customdata[1]:+.1f}%"
                                          "<extra></extra>")
    fig.update_xaxes(type="log", title_text=f"measured ({unit})")
    fig.update_yaxes(type="log", title_text=f"predicted ({unit})")
    fig.update_layout(title=f"{metric}: predicted vs measured", height=460,
                      margin=dict(l=10, r=10, t=60, b=10),
                      legend=dict(orientation="h", yanchor="top", y=-0.18, x=0))
    return fig


CLIP_PCT = 150.0  # the error plot's upper edge; points above it are listed instead


def outliers(runs: list[Run], clip_pct: float = CLIP_PCT) -> pd.DataFrame:
    """The (run, metric) errors above ``clip_pct`` percent, largest first."""
    errs = long_errors(runs)
    return errs[100 * errs.error > clip_pct].sort_values("error", ascending=False)


def error_figure(runs: list[Run], clip_pct: float = CLIP_PCT) -> go.Figure:
    """The distribution of relative errors per metric, one box per set, every run's
    point shown; the view stops at ``clip_pct`` (errors run from -100% up without a
    bound, and one wild run would flatten the rest; zooming out shows it)."""
    errs = long_errors(runs)
    fig = go.Figure()
    for group, color in _colors(errs).items():
        part = errs[errs.set == group]
        fig.add_box(x=part.metric.str.removesuffix("_s"), y=100 * part.error, name=group,
                    boxpoints="all", jitter=0.4, pointpos=0, marker=dict(color=color, size=5),
                    line=dict(width=1), customdata=part.run,
                    hovertemplate="%{customdata}<br>%{x}: %{y:+.1f}%<extra></extra>")
    for level in (-10, 10):
        fig.add_hline(y=level, line=dict(color="gray", dash="dot", width=1))
    fig.add_hline(y=0, line=dict(color="black", width=1))
    fig.update_yaxes(title_text="(predicted - measured) / measured, %")
    if not errs.empty and 100 * errs.error.max() > clip_pct:
        fig.update_yaxes(range=[min(-100.0, 100 * errs.error.min()) - 5, clip_pct])
    fig.update_layout(title="Relative error per metric and set (dotted: ±10%)", height=460,
                      boxmode="group", margin=dict(l=10, r=10, t=60, b=10),
                      legend=dict(orientation="h", yanchor="top", y=-0.12, x=0))
    return fig
