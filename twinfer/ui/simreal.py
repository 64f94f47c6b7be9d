"""The Sim vs real page: executor results JSONs (the shipped validation set and any
the user drops in) against the twin's prediction of the same runs."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from twinfer.compare import METRICS
from twinfer.sim.profile import shipped_profiles
from twinfer.spec import SpecError
from twinfer.ui import runs, validation

OWN = "the scenario's own"


def _sources() -> list[tuple[str, str, bytes]]:
    """(set, name, bytes) of the shipped results the user keeps selected, then the
    uploads."""
    shipped = validation.shipped_results()
    out = []
    if shipped:
        groups: dict[str, list[Path]] = {}
        for path in shipped:
            groups.setdefault(str(path.parent.relative_to(validation.REPO)), []).append(path)
        picked = st.sidebar.multiselect(
            "Shipped validation results", list(groups), key="sr_shipped",
            default=validation.default_groups(groups),
            format_func=lambda g: f"{g} ({len(groups[g])} runs)",
            help="Executor results committed under docs/ or validation/, by folder "
                 "(GPU runs by default; CPU runs check the plumbing, not the accuracy).")
        out += [(g, str(p), p.read_bytes()) for g in picked for p in groups[g]]
    else:
        st.info("No shipped validation results exist yet (executor results JSONs under "
                "docs/ or validation/). Drop results JSONs written by `twinfer exec` in the "
                "sidebar to compare them with the twin.")
    uploads = st.sidebar.file_uploader("Add executor results JSONs", type=["json"],
                                       accept_multiple_files=True, key="sr_upload")
    out += [("uploaded", u.name, u.getvalue()) for u in uploads or []]
    return out


def _compare_all(sources: list[tuple[str, str, bytes]], profile: str) -> list[validation.Run]:
    stamp = runs.profiles_stamp()
    compared = []
    for group, name, data in sources:
        file = Path(name).name
        try:
            compared.append(validation.Run(group, runs.compare_bytes(data, file, profile,
                                                                      stamp)))
        except SpecError as exc:
            st.error(str(exc) if str(exc).startswith(file) else f"{file}: {exc}")
        except Exception as exc:  # one bad run must not take the page down
            st.error(f"{file}: the twin could not simulate this run "
                     f"({type(exc).__name__}: {exc})")
    return compared


def render() -> None:
    st.title("Sim vs real")
    st.caption("Each executor run is simulated with the same scenario, requests and layout; "
               "error = (predicted - measured) / measured.")
    profile = st.sidebar.selectbox("Twin profile", [OWN, *shipped_profiles()], key="sr_profile",
                                   help="Simulate with this profile for every GPU type instead "
                                   "of the one each run's scenario names.")
    sources = _sources()
    if not sources:
        return
    with st.spinner("Simulating the runs..."):
        compared = _compare_all(sources, "" if profile == OWN else profile)
    if not compared:
        return
    profiles = sorted({r.comparison.profile for r in compared})
    st.subheader(f"{len(compared)} run(s), twin with {', '.join(profiles)}")
    notes: dict[str, list[str]] = {}  # what may make a comparison unfair, and where
    for r in compared:
        for note in r.comparison.notes:
            notes.setdefault(note, []).append(r.label)
    for note, where in notes.items():
        st.warning(f"{len(where)} run(s): {note}.", icon=":material/info:")
    st.plotly_chart(validation.error_figure(compared), key="sr_errors")
    wild = validation.outliers(compared)
    if not wild.empty:
        st.caption(f"Above the view ({validation.CLIP_PCT:.0f}%): " + "; ".join(
            f"{r.run} {r.metric.removesuffix('_s')} {100 * r.error:+.0f}%"
            for r in wild.head(5).itertuples()) + (" ..." if len(wild) > 5 else ""))
    summary, scatter, table = st.tabs(["Summary", "Predicted vs measured", "Runs"])
    with summary:
        st.dataframe(validation.summary_table(compared), hide_index=True, key="sr_summary",
                     column_config={c: st.column_config.NumberColumn(format="%.1f")
                                    for c in ("median %", "worst %")})
        st.caption("Absolute relative error per set; targets (issue 5) as median / worst.")
    with scatter:
        metric = st.selectbox("Metric", list(METRICS), index=METRICS.index("tpot_mean_s"),
                              key="sr_metric")
        st.plotly_chart(validation.scatter_figure(compared, metric), key="sr_scatter")
    with table:
        frame = validation.runs_table(compared)
        st.dataframe(frame, hide_index=True, key="sr_runs", column_config={
            c: st.column_config.NumberColumn(format="%.3f" if "ms" in c else "%.1f")
            for c in frame.columns if frame[c].dtype.kind == "f"})
