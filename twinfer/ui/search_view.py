"""What the Search page draws from a ``twinfer.sim.search`` result, and the executor
that reports the search's progress.

``ProgressExecutor`` is handed to ``search(..., executor=...)``: the search maps its
chunks of candidates over it (first every candidate through the fast path, then the
best through the SimPy engine) and it calls ``on_done(phase, done, total)`` as each
chunk finishes, in this process or in a pool of worker processes. Imports no
streamlit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future

import pandas as pd
import plotly.graph_objects as go

from twinfer.sim.search import Candidate, SearchResult
from twinfer.ui.editor import layout_label

KIND_COLORS = {"uniform": "#4C78A8", "hetero": "#54A24B", "fa_pool": "#F58518",
               "kv_sharded": "#B279A2"}


class ProgressExecutor(Executor):
    """Runs tasks in this process (or in ``inner``) and reports each one finished."""

    def __init__(self, on_done: Callable[[int, int, int], None],
                 inner: Executor | None = None) -> None:
        self.on_done = on_done
        self.inner = inner
        self.phase = 0

    def submit(self, fn, /, *args, **kwargs) -> Future:
        if self.inner is not None:
            return self.inner.submit(fn, *args, **kwargs)
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # handed to the caller through the future
            future.set_exception(exc)
        return future

    def map(self, fn, *iterables, timeout=None, chunksize=1) -> Iterator:
        tasks = list(zip(*iterables, strict=True))
        phase, self.phase = self.phase, self.phase + 1
        return self._results(fn, tasks, phase)

    def _results(self, fn, tasks: list[tuple], phase: int) -> Iterator:
        futures = [self.inner.submit(fn, *t) for t in tasks] if self.inner else None
        for i, task in enumerate(tasks):
            result = futures[i].result() if futures else fn(*task)
            self.on_done(phase, i + 1, len(tasks))
            yield result

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self.inner is not None:
            self.inner.shutdown(wait, cancel_futures=cancel_futures)


def best_numbers(result: SearchResult) -> list[Candidate]:
    """Every evaluated candidate, with the SimPy engine's numbers where it refined one."""
    refined = {c.index: c for c in result.refined}
    return [refined.get(c.index, c) for c in result.evaluated]


def candidates_table(result: SearchResult) -> pd.DataFrame:
    """One row per candidate that fits: the refined ones first (SimPy numbers, as the
    search chooses among them), then the rest (fast-path numbers), each group best
    first by the search's objective."""
    front = {c.index for c in result.pareto}
    rows = []
    for c in best_numbers(result):
        rows.append({
            "#": c.index, "layout": layout_label(c.layout), "kind": c.kind, "GPUs": c.num_gpus,
            "TPOT (ms)": c.tpot_s * 1e3, "TTFT (ms)": c.ttft_s * 1e3, "TPS": c.tps,
            "TPS/GPU": c.tps_per_gpu, "engine": c.engine, "Pareto": c.index in front,
            "meets SLO": c.meets(result.options),
            "chosen": c.index == result.chosen.index,
        })
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    by = {"tpot": ("TPOT (ms)", True), "tps": ("TPS", False), "cost": ("TPS/GPU", False)}
    column, ascending = by[result.options.objective]
    table["_fast"] = table["engine"] != "simpy"
    table = table.sort_values(["_fast", column, "#"], ascending=[True, ascending, True])
    return table.drop(columns="_fast").reset_index(drop=True)


def pareto_figure(result: SearchResult) -> go.Figure:
    """TPS against TPOT: every candidate by the fast path (faint), the refined ones by
    the SimPy engine (solid, ringed), the Pareto front of the fast path (TPOT, TPS,
    GPUs) joined, the chosen layout starred; hover names the layout."""
    fig = go.Figure()
    biggest = max((c.num_gpus for c in result.evaluated), default=1)

    def points(cands: list[Candidate], kind: str, refined: bool) -> None:
        sel = [c for c in cands if c.kind == kind and math.isfinite(c.tpot_s)]
        if not sel:
            return
        fig.add_scatter(
            x=[c.tpot_s * 1e3 for c in sel], y=[c.tps for c in sel], mode="markers",
            name=f"{kind} ({'SimPy' if refined else 'fast path'})", legendgroup=kind,
            marker=dict(color=KIND_COLORS.get(kind, "#777"), opacity=1.0 if refined else 0.35,
                        size=[7 + 13 * c.num_gpus / biggest for c in sel],
                        line=dict(color="black", width=1.2 if refined else 0)),
            customdata=[[layout_label(c.layout), c.num_gpus, c.ttft_s * 1e3, c.engine]
                        for c in sel],
            hovertemplate="<b>%{customdata[0]}</b><br>%{customdata[1]} GPUs<br>TPOT %{x:.3f} "
                          "ms<br>TPS %{y:,.0f}<br>TTFT %{customdata[2]:.2f} ms<br>"
                          "%{customdata[3]}<extra></extra>")

    for kind in sorted({c.kind for c in result.evaluated}):
        points(result.evaluated, kind, refined=False)
        points(result.refined, kind, refined=True)
    front = sorted(result.pareto, key=lambda c: c.tpot_s)
    fig.add_scatter(x=[c.tpot_s * 1e3 for c in front], y=[c.tps for c in front],
                    mode="lines", name="Pareto front (fast path)", hoverinfo="skip",
                    line=dict(color="black", width=1, dash="dot"))
    chosen = {c.index: c for c in result.refined}.get(result.chosen.index, result.chosen)
    fig.add_scatter(x=[chosen.tpot_s * 1e3], y=[chosen.tps], mode="markers", name="chosen",
                    marker=dict(symbol="star", size=18, color="gold",
                                line=dict(color="black", width=1)),
                    customdata=[layout_label(chosen.layout)],
                    hovertemplate="chosen: %{customdata}<extra></extra>")
    fig.update_xaxes(type="log", title_text="TPOT (ms, mean) - lower is better")
    fig.update_yaxes(title_text="TPS (output tokens/s) - higher is better")
    fig.update_layout(title="Candidates: TPS vs TPOT (marker size: GPUs)", height=500,
                      margin=dict(l=10, r=10, t=60, b=10),
                      legend=dict(orientation="h", yanchor="top", y=-0.15, x=0))
    return fig
