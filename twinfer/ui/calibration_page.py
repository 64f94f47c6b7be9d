"""The Calibration page: the shipped profiles and any the user uploads, with each
operation's samples against the curve the twin fits or interpolates through them."""

from __future__ import annotations

import streamlit as st

from twinfer.sim.profile import Profile, load_profile, shipped_profiles
from twinfer.spec import SpecError
from twinfer.ui import profile_curves as pc
from twinfer.ui import runs

SOURCE_NOTES = {
    "datasheet": "Datasheet-derived: nothing here was measured; predictions that use it are "
                 "uncalibrated.",
    "coarse first measurements": "Coarse first measurements: a few points per operation; "
                                 "`twinfer calibrate` replaces them with full sweeps.",
}


def _profiles() -> dict[str, Profile]:
    """Label -> profile: the shipped ones, then the uploaded ones that validate."""
    out: dict[str, Profile] = {}
    for name in shipped_profiles():
        try:
            out[f"{name} (shipped)"] = load_profile(name)
        except SpecError as exc:
            st.error(str(exc))
    uploads = st.sidebar.file_uploader("Add profile JSONs", type=["json"],
                                       accept_multiple_files=True, key="ca_upload",
                                       help="Files written by `twinfer calibrate`.")
    for upload in uploads or []:
        try:
            profile = runs.profile_from_bytes(upload.getvalue(), upload.name)
        except SpecError as exc:
            st.error(str(exc))
            continue
        out[f"{profile.name} (uploaded: {upload.name})"] = profile
    return out


def _overview(profile: Profile) -> None:
    note = SOURCE_NOTES.get(profile.source)
    if note:
        st.warning(note, icon="⚠️")
    st.table({"field": [r[0] for r in pc.summary_rows(profile)],
              "value": [r[1] for r in pc.summary_rows(profile)]})
    sustained = pc.sustained_figure(profile)
    if sustained is not None:
        st.plotly_chart(sustained, key="ca_sustained")
        st.caption("The GPU lowers its clocks at its power limit: GEMMs and prefill "
                   "attention are slowed by this fraction in proportion to how "
                   "compute-bound they are (docs/PROFILE.md).")
    if profile.notes:
        st.markdown("\n".join(f"- {n}" for n in profile.notes))


def _none(what: str) -> None:
    st.info(f"No {what} samples in this profile: the twin falls back to the roofline from "
            "its peaks (and says so in each prediction's provenance).")


def _gemm(profile: Profile) -> None:
    shapes = pc.gemm_shapes(profile)
    if not shapes:
        _none("GEMM")
        return
    labels = {f"n={n} k={k}": (n, k) for n, k in shapes}
    step = max(1, len(shapes) // 6)
    picked = st.multiselect("Weight shapes (n, k)", list(labels),
                            default=list(labels)[::step][:6], key="ca_gemm_shapes")
    st.plotly_chart(pc.gemm_figure(profile, [labels[p] for p in picked]), key="ca_gemm")


def _decode(profile: Profile) -> None:
    heads = pc.decode_heads(profile)
    if not heads:
        _none("decode attention")
        return
    pick = st.selectbox("Heads (q, kv, head dim)", heads, key="ca_decode_heads",
                        format_func=lambda h: f"{h[0]} q / {h[1]} kv heads x {h[2]}")
    st.plotly_chart(pc.decode_figure(profile, pick), key="ca_decode")


def _collectives(profile: Profile) -> None:
    links = [link for link, ops in profile.collectives.items()
             if any(by for by in ops.values())]
    if not links:
        st.info("No collectives in this profile.")
        return
    link = st.radio("Link", links, horizontal=True, key="ca_link")
    st.plotly_chart(pc.collective_figure(profile, link), key="ca_coll")
    st.caption("Markers: measured; lines: the fitted alpha-beta model (solid: 2 ranks, "
               "dashed: 4, dotted: 8). Beyond the measured sizes the twin follows the line. "
               "Open markers: the all-reduce replayed from a CUDA graph, which the twin "
               "uses for graph-replayed decode steps.")


def render() -> None:
    st.title("Calibration profiles")
    profiles = _profiles()
    if not profiles:
        st.info("No profiles found.")
        return
    label = st.sidebar.selectbox("Profile", list(profiles), key="ca_profile")
    profile = profiles[label]
    st.caption("Markers are measured samples; lines are what the twin's cost model predicts "
               "from them (log-log interpolation, rooflines where nothing was measured).")
    tabs = st.tabs(["Overview", "GEMM", "Decode attention", "Prefill attention",
                    "Element-wise", "Collectives"])
    with tabs[0]:
        _overview(profile)
    with tabs[1]:
        _gemm(profile)
    with tabs[2]:
        _decode(profile)
    with tabs[3]:
        if profile.ops.prefill_attention.samples:
            st.plotly_chart(pc.prefill_figure(profile), key="ca_prefill")
        else:
            _none("prefill attention")
    with tabs[4]:
        if profile.ops.elementwise.samples:
            st.plotly_chart(pc.elementwise_figure(profile), key="ca_elementwise")
        else:
            _none("element-wise")
    with tabs[5]:
        _collectives(profile)
