"""The Search page: run the layout search on a scenario and pick a layout from it.

The search (``twinfer.sim.search``) enumerates layouts of the scenario's cluster (or
of the GPUs typed in), drops what does not fit, ranks all by the fast path and
refines the best with the SimPy engine. The page shows its progress, the Pareto
plot, a sortable table of the candidates, and "use this layout": the What-if page
gets the scenario with that layout, and the mpirun command that runs it for real.
"""

from __future__ import annotations

import multiprocessing
import os
from dataclasses import replace

import streamlit as st

from twinfer.sim.search import SearchOptions, mpirun_command, on_cluster, parse_gpus, search
from twinfer.sim.twin import SIMULATED_KINDS
from twinfer.spec import SpecError
from twinfer.spec.scenario import shipped_scenarios
from twinfer.ui import nav, state
from twinfer.ui.editor import dump, layout_label, load_doc, parse, shipped_yaml
from twinfer.ui.search_view import ProgressExecutor, candidates_table, pareto_figure

RESULT = "search_result"
SOURCE_DOC = "search_source_doc"
FROM_EDITOR = "the What-if scenario"
OBJECTIVES = {"tpot": "lowest TPOT", "tps": "highest TPS", "cost": "highest TPS per GPU"}


def _source_text(choice: str) -> str:
    return state.scenario_text() if choice == FROM_EDITOR else shipped_yaml(choice)


def _options() -> tuple[str, str, SearchOptions]:
    """The search's inputs (sidebar): source scenario, GPUs, objective, SLOs, space."""
    with st.sidebar:
        source = st.selectbox("Scenario", [FROM_EDITOR, *shipped_scenarios()], key="se_source",
                              help="The model, workload and cluster to search layouts for.")
        gpus = st.text_input("GPUs (optional)", key="se_gpus",
                             placeholder="e.g. h100-sxm:8,a100-sxm-80g:8",
                             help="Search on these GPUs instead of the scenario's cluster "
                             "(nodes of up to 8 NVLink GPUs of one type, InfiniBand between).")
        objective = st.radio("Objective", list(OBJECTIVES), format_func=OBJECTIVES.get,
                             key="se_objective")
        ttft = st.number_input("SLO: TTFT at most (ms)", min_value=0.0, value=None,
                               key="se_slo_ttft", placeholder="none")
        tpot = st.number_input("SLO: TPOT at most (ms)", min_value=0.0, value=None,
                               key="se_slo_tpot", placeholder="none")
        kinds = st.multiselect("Layout kinds", list(SIMULATED_KINDS),
                               default=list(SIMULATED_KINDS), key="se_kinds")
        top_k = st.slider("Refine the best with the SimPy engine", 1, 32, 8, key="se_top_k")
        workers = st.number_input("Worker processes", 1, os.cpu_count() or 1, 1,
                                  key="se_workers", help="1: in the dashboard's process.")
    base = SearchOptions()
    opts = SearchOptions(objective=objective,
                         slo_ttft_s=ttft / 1e3 if ttft else None,
                         slo_tpot_s=tpot / 1e3 if tpot else None, top_k=top_k,
                         workers=int(workers), space=replace(base.space, kinds=tuple(kinds)))
    return source, gpus.strip(), opts


def _pool(workers: int):
    """Worker processes started fresh (a forked copy of the web server's threads
    would not be safe)."""
    if workers <= 1:
        return None
    from concurrent.futures import ProcessPoolExecutor

    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method))


def run_search(text: str, gpus: str, opts: SearchOptions) -> None:
    """Search with a progress bar; the result and its source go to the session."""
    parsed = parse(text)
    if parsed.scenario is None:
        st.error(parsed.error)
        return
    scenario = parsed.scenario
    doc = dict(parsed.doc or {})
    if gpus:
        scenario = on_cluster(scenario, parse_gpus(gpus))
        doc["cluster"] = scenario.cluster.model_dump(mode="json", exclude_none=True)
        doc.pop("baseline", None)
        doc.pop("sweep", None)
    bar = st.progress(0.0, text="enumerating layouts...")
    notes: list[str] = []

    def on_done(phase: int, done: int, total: int) -> None:
        lo, hi = (0.0, 0.85) if phase == 0 else (0.85, 1.0)
        what = "fast path" if phase == 0 else "SimPy refinement"
        bar.progress(lo + (hi - lo) * done / total, text=f"{what}: {done}/{total} chunks · "
                     + (notes[-1] if notes else ""))

    executor = ProgressExecutor(on_done, _pool(opts.workers))
    try:
        result = search(scenario, opts, executor=executor, progress=notes.append)
    finally:
        executor.shutdown()
    bar.progress(1.0, text=f"done in {result.wall_s:.1f} s · " + " · ".join(notes))
    st.session_state[RESULT] = result
    st.session_state[SOURCE_DOC] = doc


def use_layout(layout: dict) -> None:
    """Fill the What-if page with the searched scenario on ``layout``; keep the
    mpirun command that runs it for real."""
    doc = dict(st.session_state[SOURCE_DOC])
    doc["layout"] = layout
    text = dump(doc)
    parsed = parse(text)
    if parsed.scenario is None:
        st.error(parsed.error)
        return
    name = parsed.scenario.name
    command = mpirun_command(parsed.scenario, f"{name}.yaml")
    state.set_scenario(text)
    state.set_search_notice(layout_label(layout), command)
    st.success(f"The What-if page now runs **{layout_label(layout)}**. Run it for real "
               f"(with the YAML saved as {name}.yaml):")
    st.code(command, language="bash")
    nav.go("whatif")


def _show(result) -> None:
    lead = (f"{result.enumerated} layouts enumerated, {len(result.evaluated)} fit, "
            f"{len(result.dropped)} dropped; {len(result.refined)} refined with the SimPy "
            f"engine in {result.wall_s:.1f} s (fast path {result.fast_wall_s:.1f} s).")
    st.caption(lead + " The refined layouts carry the SimPy engine's numbers (queueing "
               "included) and come first; the others the fast path's, which ignores "
               "queueing and is often optimistic.")
    if not result.slo_met and (result.options.slo_ttft_s or result.options.slo_tpot_s):
        st.warning("No refined layout meets the SLOs; the best by the objective is shown.")
    st.plotly_chart(pareto_figure(result), key="se_pareto")
    table = candidates_table(result)
    st.dataframe(table, hide_index=True, key="se_table", column_config={
        "TPOT (ms)": st.column_config.NumberColumn(format="%.3f"),
        "TTFT (ms)": st.column_config.NumberColumn(format="%.2f"),
        "TPS": st.column_config.NumberColumn(format="%.0f"),
        "TPS/GPU": st.column_config.NumberColumn(format="%.1f")})
    by_index = {c.index: c for c in result.evaluated}
    labels = {i: f"#{i} {layout_label(by_index[i].layout)}" for i in table["#"]}
    pick = st.selectbox("Layout", list(labels), format_func=labels.get, key="se_pick",
                        index=list(labels).index(result.chosen.index)
                        if result.chosen.index in labels else 0)
    if st.button("Use this layout", type="primary", key="se_use"):
        use_layout(by_index[pick].layout)
    with st.expander(f"{len(result.dropped)} dropped candidates"):
        for c in result.dropped[:200]:
            st.text(f"#{c.index} {layout_label(c.layout)}: {c.error}")


def render() -> None:
    st.title("Layout search")
    source, gpus, opts = _options()
    st.caption("Ranks every candidate layout with the closed-form fast path, then "
               "re-runs the best through the SimPy engine (queueing, pool contention).")
    if not opts.space.kinds:
        st.info("Pick at least one layout kind.")
        return
    if st.button("Run search", type="primary", key="se_run"):
        try:
            text = _source_text(source)
            load_doc(text)
            run_search(text, gpus, opts)
        except SpecError as exc:
            st.error(str(exc))
    result = st.session_state.get(RESULT)
    if result is None:
        st.info("Set the options in the sidebar and run the search.")
        return
    _show(result)
