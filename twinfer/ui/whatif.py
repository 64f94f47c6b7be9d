"""The What-if page: edit a scenario, see what the twin predicts.

Inputs: a shipped scenario (sidebar), preset widgets for model, cluster, layout and
workload, and the scenario's YAML (editable, downloadable). Outputs: TTFT, TPOT and
TPS from the SimPy engine, memory per GPU against capacity, utilization and the
communication share, the simulated timeline, and TPOT/TPS against sequence length
for several layouts at once. Bad input is one inline error line; nothing else runs.
"""

from __future__ import annotations

import json
import math

import streamlit as st

from twinfer.spec import SpecError
from twinfer.ui import figures, runs, state
from twinfer.ui.editor import parse
from twinfer.ui.seqsweep import crossover, default_selection


def fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.0f} µs"


def fmt_rate(tps: float) -> str:
    return f"{tps:,.0f} tok/s" if math.isfinite(tps) else "-"


def _metrics(run: runs.TwinRun, text: str) -> None:
    r = run.result
    now = {"ttft": r.ttft_s.mean, "tpot": r.tpot_s.mean, "tps": r.tps}
    ss = st.session_state
    shown_text, shown, prev_key = state.SHOWN_KEYS
    if ss.get(shown_text) != text:
        ss[prev_key] = ss.get(shown)
        ss[shown_text], ss[shown] = text, now
    prev = ss.get(prev_key) or {}

    def delta(key: str, fmt) -> str | None:
        if key not in prev or not (math.isfinite(prev[key]) and math.isfinite(now[key])):
            return None
        diff = now[key] - prev[key]
        return None if diff == 0 else ("+" if diff > 0 else "-") + fmt(abs(diff))

    cols = st.columns(5)
    cols[0].metric("TTFT (mean)", fmt_time(r.ttft_s.mean), delta("ttft", fmt_time),
                   delta_color="inverse",
                   help=f"p50 {fmt_time(r.ttft_s.p50)}, p99 {fmt_time(r.ttft_s.p99)}")
    cols[1].metric("TPOT (mean)", fmt_time(r.tpot_s.mean), delta("tpot", fmt_time),
                   delta_color="inverse",
                   help=f"p50 {fmt_time(r.tpot_s.p50)}, p99 {fmt_time(r.tpot_s.p99)}")
    cols[2].metric("TPS", fmt_rate(r.tps), delta("tps", fmt_rate),
                   help=f"{r.output_tokens} output tokens in {fmt_time(r.makespan_s)}")
    cols[3].metric("Comm share", f"{r.comm_share:.1%}",
                   help="share of the GPUs' busy time spent in collectives and sends")
    cols[4].metric("GPUs", str(r.num_gpus), help=r.layout)
    over = [g for g in r.gpus if g.weights_bytes + g.workspace_bytes > g.usable_bytes]
    if over:
        st.error(f"{len(over)} GPU(s) cannot hold their weights and workspace")


def _seq_tab(text: str, stamp: tuple) -> None:
    choices = runs.layout_choices(text, stamp)
    lengths = runs.seq_lengths(text)
    key = "wi_layouts_" + runs.digest(json.dumps(list(choices)).encode())
    left, right = st.columns([3, 1])
    chosen = left.multiselect("Layouts", list(choices), default=default_selection(choices),
                              key=key, help="The scenario's layout, its baseline, and other "
                              "layouts of the same cluster (from the search space).")
    view = right.radio("View", list(figures.SEQ_VIEWS), key="wi_seq_view", horizontal=True,
                       help="decode: steady-state decode step at each length (prefill "
                       "excluded); served: the whole workload through the fast path.")
    if not chosen:
        st.info("Pick at least one layout.")
        return
    points = [p for label in chosen
              for p in runs.seq_points(text, label, json.dumps(choices[label]),
                                       tuple(lengths), stamp)]
    st.plotly_chart(figures.seq_figure(points, view), key="wi_seq_chart")
    tpot_key, tps_key, _ = figures.SEQ_VIEWS[view]
    base = next((c for c in chosen if c.endswith("(baseline)")), None)
    mine = next((c for c in chosen if c.endswith("(scenario)")), None)
    if base and mine:
        for key_, what in ((tpot_key, "TPOT"), (tps_key, "TPS")):
            n = crossover(points, mine, base, key_)
            if n is None:
                st.caption(f"{what}: the scenario's layout does not overtake the baseline "
                           "within these lengths.")
            elif n == min(lengths):
                st.caption(f"{what}: the scenario's layout beats the baseline at every length.")
            else:
                st.caption(f"{what}: the scenario's layout overtakes the baseline from "
                           f"**{n} tokens** on.")
    failed = [p for p in points if p.error]
    if failed:
        with st.expander(f"{len(failed)} point(s) could not run"):
            for p in failed:
                st.text(f"{p.layout} @ {p.prompt_tokens}: {p.error}")


def _timeline_tab(run: runs.TwinRun, name: str, text: str) -> None:
    end_ms = max(run.result.makespan_s * 1e3, 1e-3)
    if not run.bars:
        st.info("No steps were simulated.")
        return
    first_ms = min(b.start_s for b in run.bars) * 1e3
    # default window: about the first 80 steps, so that single steps can be told apart
    cut = sorted(b.start_s + b.dur_s for b in run.bars)[min(len(run.bars), 80) - 1] * 1e3
    window = st.slider("Window (simulated ms)", 0.0, float(end_ms),
                       (float(first_ms), float(min(end_ms, max(cut, first_ms + 1e-3)))),
                       key="wi_window_" + runs.digest(repr(end_ms).encode()))
    fig, dropped = figures.timeline_figure(run.bars, run.rows, window[0] / 1e3, window[1] / 1e3)
    st.plotly_chart(fig, key="wi_timeline_chart")
    if dropped:
        st.caption(f"{dropped} more steps in this window are not drawn: narrow the window.")
    st.download_button("Download Chrome/Perfetto trace", lambda: runs.trace_json(text),
                       file_name=f"{name}.trace.json", mime="application/json",
                       help="Open in https://ui.perfetto.dev or chrome://tracing")


def _details(run: runs.TwinRun) -> None:
    r = run.result
    with st.expander("What the prediction rests on"):
        st.markdown(f"**Layout:** {r.layout} · **engine:** {r.engine} · **steps:** {r.steps} "
                    f"· **wall:** {r.wall_s * 1e3:.0f} ms")
        for gpu_type, prof in r.profiles.items():
            st.markdown(f"- `{gpu_type}`: profile **{prof['name']}** ({prof['source']}, "
                        f"{prof['device']}, {prof['date'] or 'undated'})")
        st.text("\n".join(r.provenance) or "(no notes)")
        st.download_button("Download result JSON", json.dumps(r.to_dict(), indent=1),
                           file_name=f"{r.scenario}.result.json", mime="application/json")


def render() -> None:
    st.title("What-if")
    state.init()
    state.sync_widgets()
    text = state.scenario_text()
    parsed = parse(text)
    kind = parsed.doc.get("layout", {}).get("kind", "uniform") \
        if parsed.doc and isinstance(parsed.doc.get("layout"), dict) else None
    with st.sidebar:
        state.scenario_picker()
        state.preset_inputs(kind)
    name = parsed.scenario.name if parsed.scenario else "scenario"
    with st.expander("Scenario YAML", expanded=parsed.scenario is None):
        state.yaml_editor(f"{name}.yaml")
    notice = state.search_notice()
    if notice:
        st.info(f"Layout from the search: **{notice[0]}**. Run it for real (save the YAML "
                "above as the file named in the command):")
        st.code(notice[1], language="bash")
    if parsed.scenario is None:
        st.error(parsed.error)
        return
    stamp = runs.profiles_stamp()
    try:
        with st.spinner("Simulating..."):
            run = runs.run_twin(text, stamp)
    except SpecError as exc:
        st.error(str(exc))
        return
    except Exception as exc:  # the page stays up whatever the twin raises
        st.error(f"The twin failed on this scenario ({type(exc).__name__}: {exc})")
        return
    if parsed.scenario.description:
        st.caption(" ".join(parsed.scenario.description.split()))
    _metrics(run, text)
    if run.result.warnings:
        st.warning("\n".join(f"- {w}" for w in run.result.warnings), icon="⚠️")
    seq, memory, util, timeline = st.tabs(["TPOT/TPS vs length", "Memory", "Utilization",
                                           "Timeline"])
    with seq:
        _seq_tab(text, stamp)
    with memory:
        st.plotly_chart(figures.memory_figure(run.result), key="wi_memory_chart")
    with util:
        st.plotly_chart(figures.utilization_figure(run.result), key="wi_util_chart")
    with timeline:
        _timeline_tab(run, name, text)
    _details(run)
