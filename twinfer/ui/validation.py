"""Simulated versus measured for the Sim vs real page: executor results JSONs found in
the repository (the shipped validation set) or dropped in by the user, each put
through ``twinfer.compare``, and the tables and figures of their errors.

The relative error is ``(predicted - measured) / measured`` (``Comparison.errors``).
Imports no streamlit.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from twinfer.compare import METRICS, Comparison

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


def label(c: Comparison) -> str:
    return f"{c.device} {c.layout} b{c.requests} c{c.prompt_tokens}"


def runs_table(comps: list[Comparison]) -> pd.DataFrame:
    """One row per run: what ran, and measured / predicted / error of the key metrics."""
    rows = []
    for c in comps:
        err = c.errors()
        row = {"run": label(c), "file": Path(c.source).name, "model": c.model,
               "profile": c.profile}
        for key in ("ttft_mean_s", "tpot_mean_s", "tpot_p99_s", "tps"):
            scale, unit = (1.0, "") if key == "tps" else (1e3, " ms")
            name = key.removesuffix("_s").replace("_", " ")
            row[f"{name} meas{unit}"] = c.measured.get(key, math.nan) * scale
            row[f"{name} pred{unit}"] = c.predicted.get(key, math.nan) * scale
            row[f"{name} err %"] = 100 * err[key]
        rows.append(row)
    return pd.DataFrame(rows)


def long_errors(comps: list[Comparison]) -> pd.DataFrame:
    """Every (run, metric) with a finite error: measured, predicted, relative error."""
    rows = []
    for c in comps:
        err = c.errors()
        for key in METRICS:
            if math.isfinite(err[key]):
                rows.append({"run": label(c), "metric": key, "measured": c.measured[key],
                             "predicted": c.predicted[key], "error": err[key]})
    return pd.DataFrame(rows, columns=["run", "metric", "measured", "predicted", "error"])


def summary_table(comps: list[Comparison]) -> pd.DataFrame:
    """Median and worst absolute error per metric, against the targets where set."""
    errs = long_errors(comps)
    rows = []
    for key in METRICS:
        e = errs.loc[errs.metric == key, "error"].abs().to_numpy()
        if e.size == 0:
            continue
        target = TARGETS.get(key.split("_")[0])
        rows.append({"metric": key.removesuffix("_s"), "runs": int(e.size),
                     "median %": 100 * np.median(e), "worst %": 100 * e.max(),
                     "target": f"{target[0]:.0%} / {target[1]:.0%}" if target else "-"})
    return pd.DataFrame(rows)


def scatter_figure(comps: list[Comparison], metric: str) -> go.Figure:
    """Predicted against measured for one metric, every run a point; the diagonal and
    a band of +-10%."""
    errs = long_errors(comps)
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
        fig.add_scatter(x=sel.measured * scale, y=sel.predicted * scale, mode="markers",
                        name="runs", marker=dict(size=10, color=PALETTE[0]),
                        customdata=np.stack([sel.run, 100 * sel.error], axis=1),
                        hovertemplate="%{customdata[0]}<br>measured %{x:.4g}<br>predicted "
                                      "%{y:.4g}<br>error %{customdata[1]:+.1f}%<extra></extra>")
    fig.update_xaxes(type="log", title_text=f"measured ({unit})")
    fig.update_yaxes(type="log", title_text=f"predicted ({unit})")
    fig.update_layout(title=f"{metric}: predicted vs measured", height=440,
                      margin=dict(l=10, r=10, t=60, b=10))
    return fig


def error_figure(comps: list[Comparison]) -> go.Figure:
    """The distribution of relative errors per metric: a box and every run's point."""
    errs = long_errors(comps)
    fig = go.Figure()
    for i, key in enumerate(m for m in METRICS if (errs.metric == m).any()):
        sel = errs[errs.metric == key]
        fig.add_box(y=100 * sel.error, name=key.removesuffix("_s"), boxpoints="all",
                    jitter=0.4, pointpos=0, marker=dict(color=PALETTE[i % len(PALETTE)]),
                    customdata=sel.run, hovertemplate="%{customdata}<br>%{y:+.1f}%"
                                                      "<extra></extra>")
    for level in (-10, 10):
        fig.add_hline(y=level, line=dict(color="gray", dash="dot", width=1))
    fig.add_hline(y=0, line=dict(color="black", width=1))
    fig.update_yaxes(title_text="relative error (predicted - measured) / measured, %")
    fig.update_layout(title="Relative error per metric (dotted: ±10%)", height=440,
                      showlegend=False, margin=dict(l=10, r=10, t=60, b=10))
    return fig
