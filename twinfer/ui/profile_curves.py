"""A calibration profile's samples against what the twin makes of them.

Per operation the measured samples are markers and the cost model's prediction
(``twinfer.sim.cost.CostModel``: log-log interpolation between samples, rooflines
where there are none) is a line over the measured range; per collective and link
the samples are markers and the fitted alpha-beta line ``alpha + bytes / beta`` is
drawn through them. Imports no streamlit.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import plotly.graph_objects as go

from twinfer.sim.cost import CostModel
from twinfer.sim.profile import Profile
from twinfer.spec.model import DTYPE_BYTES

US = 1e6
PALETTE = ["#4C78A8", "#E45756", "#54A24B", "#F58518", "#B279A2", "#72B7B2", "#9D755D",
           "#EECA3B", "#FF9DA6", "#79706E"]
DASH = {"2": "solid", "4": "dash", "8": "dot"}


def cost_model(profile: Profile) -> CostModel | None:
    """The twin's view of the profile, for the dtype its samples were taken in."""
    dtype = profile.ops.gemm.dtype
    if dtype not in DTYPE_BYTES or dtype not in profile.peaks.matmul_flops_per_s:
        dtype = next((d for d in profile.peaks.matmul_flops_per_s if d in DTYPE_BYTES), "")
    return CostModel(profile, dtype) if dtype else None


def _span(values: list[float], points: int = 48) -> np.ndarray:
    lo, hi = min(values), max(values)
    return np.geomspace(lo, hi, points) if hi > lo else np.array([lo])


def _figure(title: str, x_title: str) -> go.Figure:
    fig = go.Figure()
    fig.update_xaxes(type="log", title_text=x_title)
    fig.update_yaxes(type="log", title_text="time (µs)")
    fig.update_layout(title=title, height=460, margin=dict(l=10, r=10, t=60, b=10),
                      legend=dict(font=dict(size=11)))
    return fig


def _pair(fig: go.Figure, name: str, color: str, xs, ts, curve_x, curve_t,
          dash: str = "solid") -> None:
    fig.add_scatter(x=list(xs), y=[t * US for t in ts], mode="markers", name=name,
                    legendgroup=name, marker=dict(color=color, size=7),
                    hovertemplate=name + "<br>%{x:.4g}: %{y:.4g} µs (measured)<extra></extra>")
    if curve_x is not None:
        fig.add_scatter(x=list(curve_x), y=[t * US for t in curve_t], mode="lines",
                        name=name + " (model)", legendgroup=name, showlegend=False,
                        line=dict(color=color, dash=dash, width=1.5),
                        hovertemplate=name + "<br>%{x:.4g}: %{y:.4g} µs (model)<extra></extra>")


def gemm_shapes(profile: Profile) -> list[tuple[int, int]]:
    return sorted({(s.n, s.k) for s in profile.ops.gemm.samples}, key=lambda nk: nk[0] * nk[1])


def gemm_figure(profile: Profile, shapes: list[tuple[int, int]]) -> go.Figure:
    """[m, k] x [k, n] time against m, per weight shape (n, k)."""
    fig = _figure(f"GEMM ({profile.ops.gemm.dtype}): samples and the model over m",
                  "m (tokens)")
    model = cost_model(profile)
    for i, (n, k) in enumerate(shapes):
        pts = sorted((s for s in profile.ops.gemm.samples if (s.n, s.k) == (n, k)),
                     key=lambda s: s.m)
        if not pts:
            continue
        ms = _span([s.m for s in pts])
        curve = [model.gemm_s(max(1, round(m)), n, k) for m in ms] if model else None
        _pair(fig, f"n={n} k={k}", PALETTE[i % len(PALETTE)], [s.m for s in pts],
              [s.time_s for s in pts], ms if model else None, curve)
    return fig


def decode_heads(profile: Profile) -> list[tuple[int, int, int]]:
    return sorted({(s.q_heads, s.kv_heads, s.head_dim)
                   for s in profile.ops.decode_attention.samples})


def decode_figure(profile: Profile, heads: tuple[int, int, int]) -> go.Figure:
    """Decode attention time against context, one curve per batch size."""
    q, kv, d = heads
    fig = _figure(f"decode attention, {q} q / {kv} kv heads x {d}", "context (tokens)")
    model = cost_model(profile)
    by_batch: dict[int, list] = defaultdict(list)
    for s in profile.ops.decode_attention.samples:
        if (s.q_heads, s.kv_heads, s.head_dim) == heads:
            by_batch[s.batch].append(s)
    for i, (batch, pts) in enumerate(sorted(by_batch.items())):
        pts.sort(key=lambda s: s.context)
        cs = _span([s.context for s in pts])
        curve = [model.decode_attention_s(batch, c, q, kv, d) for c in cs] if model else None
        _pair(fig, f"batch {batch}", PALETTE[i % len(PALETTE)], [s.context for s in pts],
              [s.time_s for s in pts], cs if model else None, curve)
    return fig


def prefill_figure(profile: Profile) -> go.Figure:
    """Causal prefill attention time against prompt tokens, per head configuration."""
    fig = _figure("prefill attention (causal)", "prompt tokens")
    model = cost_model(profile)
    by_heads: dict[tuple, list] = defaultdict(list)
    for s in profile.ops.prefill_attention.samples:
        by_heads[(s.q_heads, s.kv_heads, s.head_dim)].append(s)
    for i, ((q, kv, d), pts) in enumerate(sorted(by_heads.items())):
        pts.sort(key=lambda s: s.tokens)
        ns = _span([s.tokens for s in pts])
        curve = [model.prefill_attention_s(n, q, kv, d) for n in ns] if model else None
        _pair(fig, f"{q}/{kv} heads x {d}", PALETTE[i % len(PALETTE)], [s.tokens for s in pts],
              [s.time_s for s in pts], ns if model else None, curve)
    return fig


def elementwise_figure(profile: Profile) -> go.Figure:
    """Memory-bound kernels: time against bytes moved, and the copy-peak line."""
    fig = _figure("element-wise / norm (bytes read + written)", "bytes")
    pts = sorted(profile.ops.elementwise.samples, key=lambda s: s.bytes)
    model = cost_model(profile)
    if pts:
        xs = _span([s.bytes for s in pts])
        curve = [model.elementwise_s(x) for x in xs] if model else None
        _pair(fig, "measured", PALETTE[0], [s.bytes for s in pts], [s.time_s for s in pts],
              xs if model else None, curve)
        fig.add_scatter(x=list(xs), y=[x / profile.peaks.copy_bytes_per_s * US for x in xs],
                        mode="lines", name="copy peak", line=dict(color="gray", dash="dot"))
    return fig


def collective_figure(profile: Profile, link: str) -> go.Figure:
    """Each collective over ``link``: samples and the fitted alpha-beta line, per
    group size (line style)."""
    fig = _figure(f"collectives over {link}: samples and alpha-beta fits", "bytes per rank")
    for i, (op, by_ranks) in enumerate(profile.collectives.get(link, {}).items()):
        for ranks, fit in sorted(by_ranks.items()):
            pts = sorted(fit.samples, key=lambda s: s.bytes)
            xs = [s.bytes for s in pts] or [4096, 256 << 20]
            line_x = _span(xs)
            line_t = [fit.alpha_s + x / fit.bytes_per_s for x in line_x]
            label = (f"{op} x{ranks}: {fit.alpha_s * US:.1f} µs + "
                     f"{fit.bytes_per_s / 1e9:.0f} GB/s")
            color = PALETTE[i % len(PALETTE)]
            _pair(fig, label, color, xs if pts else [],
                  [s.time_s for s in pts], line_x, line_t, DASH.get(ranks, "dashdot"))
            for series, what, symbol in (
                    (fit.graph_samples, "replayed from a CUDA graph", "circle-open"),
                    (fit.oneshot_graph_samples, "one-shot symm-mem, CUDA graph",
                     "triangle-up-open")):
                graph = sorted(series, key=lambda s: s.bytes)
                if not graph:
                    continue
                name = f"{op} x{ranks}: {what}"
                fig.add_scatter(x=[s.bytes for s in graph], y=[s.time_s * US for s in graph],
                                mode="markers+lines", name=name,
                                marker=dict(color=color, size=8, symbol=symbol),
                                line=dict(color=color, width=1, dash="dot"),
                                hovertemplate=name + "<br>%{x:.4g}: %{y:.4g} µs<extra></extra>")
    return fig


def sustained_figure(profile: Profile) -> go.Figure | None:
    """The prefill's GEMMs (older profiles: the square GEMM) run back to back: TFLOP/s
    per window against their burst rate and the sustained fraction the cost model
    applies (None: not measured)."""
    peaks = profile.peaks
    if not peaks.sustained_samples:
        return None
    fig = go.Figure()
    fig.add_scatter(x=[s.t_s for s in peaks.sustained_samples],
                    y=[s.flops_per_s / 1e12 for s in peaks.sustained_samples],
                    mode="lines+markers",
                    name=(peaks.sustained_gemms or "8192³ GEMM")[:60] + ", 50 ms windows",
                    marker=dict(size=4, color=PALETTE[0]))
    burst = (peaks.sustained_burst_flops_per_s
             or max(peaks.matmul_flops_per_s.values(), default=0.0)) / 1e12
    if burst:
        fig.add_hline(y=burst, line_dash="dash", line_color="gray",
                      annotation_text=f"burst {burst:.0f} TFLOP/s")
        fig.add_hline(y=burst * peaks.sustained_matmul_fraction, line_dash="dot",
                      line_color=PALETTE[1],
                      annotation_text=f"sustained {peaks.sustained_matmul_fraction:.3f}")
    fig.update_layout(title="sustained tensor-core throughput", height=360,
                      margin=dict(l=10, r=10, t=60, b=10),
                      xaxis_title="seconds of back-to-back GEMMs", yaxis_title="TFLOP/s")
    return fig


def summary_rows(profile: Profile) -> list[tuple[str, str]]:
    """What the profile is: device, software, peaks, overheads, memory, sample counts."""
    dev, ops, over = profile.device, profile.ops, profile.overheads
    peaks = ", ".join(f"{d} {f / 1e12:.0f} TFLOP/s"
                      for d, f in profile.peaks.matmul_flops_per_s.items())
    counts = (f"GEMM {len(ops.gemm.samples)}, decode {len(ops.decode_attention.samples)}, "
              f"prefill {len(ops.prefill_attention.samples)}, element-wise "
              f"{len(ops.elementwise.samples)}")
    colls = sum(len(f.samples) for ops_ in profile.collectives.values()
                for by in ops_.values() for f in by.values())
    return [
        ("name", profile.name), ("source", profile.source),
        ("device", f"{dev.name}, {dev.memory_bytes / (1 << 30):.0f} GiB, {dev.sm_count} SMs"),
        ("software", ", ".join(f"{k} {v}" for k, v in (("driver", dev.driver),
                                                        ("CUDA", dev.cuda),
                                                        ("torch", dev.torch),
                                                        ("triton", dev.triton),
                                                        ("NCCL", dev.nccl)) if v) or "-"),
        ("date", dev.date or "undated"), ("host", dev.host or "-"),
        ("copy peak", f"{profile.peaks.copy_bytes_per_s / 1e12:.2f} TB/s"),
        ("matmul peaks", peaks or "-"),
        ("sustained matmul", f"{profile.peaks.sustained_matmul_fraction:.3f} of the peak"
                             + ("" if profile.peaks.sustained_samples else " (not measured)")),
        ("overheads", f"step {over.step_s * US:.1f} µs, per layer {over.per_layer_s * US:.2f} "
                      f"µs, with followers +{over.follower_step_s * US:.1f} µs, CUDA graphs "
                      f"{over.cuda_graphs}, comm overlap {over.comm_overlap:.0%}"),
        ("memory", f"workspace {profile.memory.workspace_bytes / (1 << 30):.2f} GiB, "
                   f"activations {profile.memory.activation_bytes_per_token} B/token"),
        ("samples", f"{counts}; collectives {colls}"),
    ]
