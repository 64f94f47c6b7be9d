"""Plotly figures of one twin run: memory, utilization, timeline, sequence-length sweep.

Pure functions of the twin's results (``SimResult``, timeline bars, sweep points);
the pages only lay them out. Imports no streamlit.
"""

from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from twinfer.sim import SimResult
from twinfer.ui.seqsweep import SeqPoint
from twinfer.ui.timeline import Bar

GIB = float(1 << 30)
COLORS = {"weights": "#4C78A8", "workspace": "#9D755D", "kv_peak": "#F58518",
          "kv_free": "#FFD8A8", "reserved": "#D9D9D9", "prefill": "#E45756",
          "mixed": "#B279A2", "decode": "#54A24B", "pool": "#F58518", "send": "#4C78A8",
          "busy": "#4C78A8", "comm": "#E45756"}
LAYOUT_DEFAULTS = dict(margin=dict(l=10, r=10, t=60, b=10), legend=dict(orientation="h",
                       yanchor="top", y=-0.2, x=0), height=400)


def gpu_label(g) -> str:
    where = "pool" if g.pipeline < 0 else f"p{g.pipeline}s{g.stage}"
    return f"GPU {g.gpu} {where}"


def memory_figure(result: SimResult) -> go.Figure:
    """Per GPU: weights, workspace, KV at its peak, KV reserved but unused, and what
    the memory-utilization limit keeps back, stacked up to the GPU's capacity."""
    labels = [gpu_label(g) for g in result.gpus]
    parts = [
        ("weights", [g.weights_bytes for g in result.gpus]),
        ("workspace", [g.workspace_bytes for g in result.gpus]),
        ("KV cache at peak", [g.kv_peak_bytes for g in result.gpus]),
        ("KV reserved, unused", [max(g.kv_capacity_bytes - g.kv_peak_bytes, 0)
                                 for g in result.gpus]),
        ("held back (utilization limit)", [max(g.capacity_bytes - g.usable_bytes, 0)
                                           for g in result.gpus]),
    ]
    keys = ("weights", "workspace", "kv_peak", "kv_free", "reserved")
    fig = go.Figure()
    for (name, values), key in zip(parts, keys, strict=True):
        fig.add_bar(x=labels, y=[v / GIB for v in values], name=name, marker_color=COLORS[key],
                    hovertemplate="%{x}<br>" + name + ": %{y:.2f} GiB<extra></extra>")
    fig.add_scatter(x=labels, y=[g.capacity_bytes / GIB for g in result.gpus], mode="markers",
                    marker=dict(symbol="line-ew-open", size=28, color="black"),
                    name="capacity", hovertemplate="%{x}<br>capacity %{y:.1f} GiB<extra></extra>")
    fig.update_layout(barmode="stack", yaxis_title="GiB", title="Memory per GPU vs capacity",
                      **LAYOUT_DEFAULTS)
    return fig


def utilization_figure(result: SimResult) -> go.Figure:
    """Per GPU the share of the run it computed or communicated, and the communication
    part of it; per stage-to-stage link its busy share."""
    labels = [gpu_label(g) for g in result.gpus]
    rows = 2 if result.links else 1
    fig = make_subplots(rows=rows, cols=1, row_heights=[0.75, 0.25][:rows],
                        subplot_titles=["GPUs", "stage-to-stage links"][:rows],
                        vertical_spacing=0.18)
    fig.add_bar(x=labels, y=[100 * g.busy_fraction for g in result.gpus], name="busy",
                marker_color=COLORS["busy"], row=1, col=1,
                hovertemplate="%{x}<br>busy %{y:.1f}%<extra></extra>")
    fig.add_bar(x=labels, y=[100 * g.comm_fraction for g in result.gpus],
                name="communicating", marker_color=COLORS["comm"], row=1, col=1,
                hovertemplate="%{x}<br>communicating %{y:.1f}%<extra></extra>")
    if result.links:
        names = [f"p{lk.pipeline} s{lk.from_stage}->s{lk.from_stage + 1} ({lk.link})"
                 for lk in result.links]
        fig.add_bar(x=names, y=[100 * lk.busy_fraction for lk in result.links],
                    name="link busy", marker_color=COLORS["send"], row=2, col=1,
                    hovertemplate="%{x}<br>busy %{y:.2f}%<extra></extra>")
    fig.update_yaxes(title_text="% of run", row=1, col=1)
    fig.update_layout(barmode="group", title="Utilization and communication",
                      **{**LAYOUT_DEFAULTS, "height": 420 if rows == 2 else 360})
    return fig


def timeline_figure(bars: list[Bar], rows: list[str], start_s: float, end_s: float,
                    max_bars: int = 4000) -> tuple[go.Figure, int]:
    """A Gantt chart of the bars overlapping [start_s, end_s] (at most ``max_bars``,
    earliest first); returns the figure and how many bars were left out."""
    shown = [b for b in bars if b.start_s + b.dur_s >= start_s and b.start_s <= end_s]
    shown.sort(key=lambda b: b.start_s)
    dropped = max(0, len(shown) - max_bars)
    shown = shown[:max_bars]
    fig = go.Figure()
    # every row stays on the axis, even one with nothing in this window
    fig.add_scatter(x=[start_s * 1e3] * len(rows), y=rows, mode="markers", showlegend=False,
                    marker=dict(opacity=0), hoverinfo="skip")
    for kind in ("prefill", "mixed", "decode", "pool", "send"):
        sel = [b for b in shown if b.kind == kind]
        if not sel:
            continue
        fig.add_bar(
            y=[b.row for b in sel], x=[b.dur_s * 1e3 for b in sel],
            base=[b.start_s * 1e3 for b in sel], orientation="h", name=kind,
            marker=dict(color=COLORS[kind], line=dict(color="white", width=0.5)),
            customdata=[b.label for b in sel],
            hovertemplate="%{y}<br>%{customdata}<br>start %{base:.3f} ms, "
                          "%{x:.3f} ms<extra></extra>")
    fig.update_yaxes(categoryorder="array", categoryarray=list(reversed(rows)))
    fig.update_layout(barmode="overlay", xaxis_title="simulated time (ms)",
                      title="Simulated timeline (stages, FA pool, links)",
                      **{**LAYOUT_DEFAULTS, "height": max(260, 90 + 34 * len(rows))})
    return fig, dropped


SEQ_VIEWS = {
    "decode": ("decode_tpot_s", "decode_tps", "steady-state decode step (prefill excluded)"),
    "served": ("tpot_s", "tps", "served workload, fast path (prefill included)"),
}


def seq_figure(points: list[SeqPoint], view: str = "decode") -> go.Figure:
    """TPOT (left) and TPS (right) against prompt length, one line per layout."""
    tpot_key, tps_key, what = SEQ_VIEWS[view]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("TPOT (ms, lower is better)",
                                                        "TPS (tokens/s, higher is better)"))
    layouts = list(dict.fromkeys(p.layout for p in points))
    palette = ["#4C78A8", "#E45756", "#54A24B", "#F58518", "#B279A2", "#72B7B2", "#9D755D"]
    for n, layout in enumerate(layouts):
        pts = sorted((p for p in points if p.layout == layout and not p.error),
                     key=lambda p: p.prompt_tokens)
        color = palette[n % len(palette)]
        dash = "dash" if layout.endswith("(baseline)") else "solid"
        xs = [p.prompt_tokens for p in pts]
        for col, key, scale in ((1, tpot_key, 1e3), (2, tps_key, 1.0)):
            ys = [getattr(p, key) * scale for p in pts]
            fig.add_scatter(x=xs, y=[y if math.isfinite(y) else None for y in ys],
                            mode="lines+markers", name=layout, legendgroup=layout,
                            showlegend=col == 1, line=dict(color=color, dash=dash),
                            row=1, col=col,
                            hovertemplate=layout + "<br>%{x} tokens: %{y:.4g}<extra></extra>")
    fig.update_xaxes(type="log", title_text="prompt tokens", dtick=math.log10(2),
                     tickformat="d")
    fig.update_yaxes(type="log", col=1)
    fig.update_layout(title=f"TPOT and TPS vs sequence length: {what}",
                      **{**LAYOUT_DEFAULTS, "height": 420})
    return fig
