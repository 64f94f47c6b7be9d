"""The scenario the pages share, and the What-if inputs that edit it.

``st.session_state[SCENARIO_YAML]`` holds the scenario as YAML text: the one source
of truth, kept under a key no widget owns (Streamlit drops a widget's state when a
page that does not draw it runs, so the pages could not share it otherwise). The
YAML editor and the preset widgets are seeded from it whenever it changed since they
were last drawn; their callbacks write it back.
"""

from __future__ import annotations

import streamlit as st

from twinfer.sim.profile import shipped_profiles
from twinfer.spec import DEFAULT_SCENARIO, SpecError, preset_names
from twinfer.spec.scenario import shipped_scenarios
from twinfer.ui.editor import (
    ARRIVALS,
    KV_COMMS,
    dump,
    load_doc,
    read_presets,
    shipped_yaml,
    write_preset,
)

SCENARIO_YAML = "scenario_yaml"  # canonical text (no widget owns this key)
SCENARIO_NAME = "scenario_name"
SEARCH_NOTICE = "search_notice"  # (layout label, mpirun command) from the Search page
EDITOR = "wi_yaml"
SOURCE = "wi_source"
SYNCED = "_wi_synced"
PRESET_KEY = "wi_preset_{}"
SHOWN_KEYS = ("_wi_shown_text", "_wi_shown_metrics", "_wi_prev_metrics")  # metric deltas


def init() -> None:
    """The default scenario on a session's first run. Pages that draw the What-if
    inputs call ``sync_widgets`` next, before drawing any of them."""
    ss = st.session_state
    if SCENARIO_YAML not in ss:
        ss[SCENARIO_YAML] = shipped_yaml(DEFAULT_SCENARIO)
        ss[SCENARIO_NAME] = DEFAULT_SCENARIO


def set_scenario(text: str, name: str | None = None) -> None:
    """Replace the shared scenario (the What-if widgets follow on their next draw)."""
    st.session_state[SCENARIO_YAML] = text
    if name is not None:
        st.session_state[SCENARIO_NAME] = name


def scenario_text() -> str:
    init()
    return st.session_state[SCENARIO_YAML]


def sync_widgets() -> None:
    """Seed the editor and preset widgets from the canonical text if it changed (or a
    widget's state was dropped while another page ran)."""
    ss = st.session_state
    text = ss[SCENARIO_YAML]
    keys = [PRESET_KEY.format(f) for f in ("model", "requests")] + [EDITOR, SOURCE]
    if ss.get(SYNCED) == text and all(k in ss for k in keys):
        return
    ss[EDITOR] = text
    ss[SOURCE] = ss.get(SCENARIO_NAME, DEFAULT_SCENARIO)
    try:
        values = read_presets(load_doc(text))
    except SpecError:
        values = {}
    for field, value in values.items():
        ss[PRESET_KEY.format(field)] = value
    ss[SYNCED] = text


# ---- callbacks (run before the script, so they may set widget state) --------------------
def _on_source() -> None:
    name = st.session_state[SOURCE]
    set_scenario(shipped_yaml(name), name)
    for key in (SEARCH_NOTICE, *SHOWN_KEYS):  # another scenario: no deltas against the last
        st.session_state.pop(key, None)


def _on_editor() -> None:
    set_scenario(st.session_state[EDITOR])


def _on_preset(field: str) -> None:
    ss = st.session_state
    value = ss[PRESET_KEY.format(field)]
    if value is None:
        return
    try:
        doc = load_doc(ss[SCENARIO_YAML])
    except SpecError:
        return  # the editor shows the error; presets cannot apply to broken YAML
    set_scenario(dump(write_preset(doc, field, value)))


# ---- the inputs ----------------------------------------------------------------------
def _number(field: str, label: str, values: dict, *, min_value: float = 1,
            max_value: float | None = None, step: float = 1, fmt: str | None = None,
            help: str | None = None) -> None:
    st.number_input(label, key=PRESET_KEY.format(field), min_value=min_value,
                    max_value=max_value, step=step, format=fmt,
                    disabled=values.get(field) is None, on_change=_on_preset, args=(field,),
                    help=help or ("not a single number in this scenario: edit the YAML"
                                  if values.get(field) is None else None))


def _select(field: str, label: str, options: list, values: dict,
            help: str | None = None) -> None:
    current = values.get(field)
    if current is not None and current not in options:
        options = [*options, current]
    st.selectbox(label, options, key=PRESET_KEY.format(field), on_change=_on_preset,
                 args=(field,), disabled=current is None,
                 placeholder="as written in the YAML", help=help)


def scenario_picker() -> None:
    """The shipped-scenario selector (sidebar)."""
    names = list(shipped_scenarios())
    st.selectbox("Shipped scenario", names, key=SOURCE, on_change=_on_source,
                 help="Loads the scenario into the editor; your edits start from it.")


def preset_inputs(layout_kind: str | None) -> None:
    """Model, cluster, layout and workload presets, one group after another."""
    try:
        values = read_presets(load_doc(st.session_state[SCENARIO_YAML]))
    except SpecError:
        values = {}
    st.markdown("**Model**")
    _select("model", "Preset", preset_names(), values,
            help="Inline models and Hugging Face configs are edited in the YAML.")
    st.markdown("**Cluster**")
    _select("gpu", "GPU type (profile)", list(shipped_profiles()), values,
            help="Every node gets this GPU type; mixed clusters are edited in the YAML.")
    left, right = st.columns(2)
    with left:
        _number("gpus_per_node", "GPUs per node", values, max_value=64)
    with right:
        _number("nodes", "Nodes", values, max_value=256)
    st.markdown(f"**Layout** ({layout_kind or 'see YAML'})")
    left, right = st.columns(2)
    if layout_kind == "uniform":
        with left:
            _number("tp", "Tensor parallel (TP)", values, max_value=128)
            _number("replicas", "Replicas", values, max_value=1024)
        with right:
            _number("pp", "Pipeline parallel (PP)", values, max_value=128)
    elif layout_kind == "kv_sharded":
        with left:
            _number("tp", "KV-shard group (TP)", values, max_value=128)
            _number("replicas", "Replicas", values, max_value=1024)
        with right:
            _select("kv_comm", "Exchange", list(KV_COMMS), values)
    elif layout_kind == "fa_pool":
        with left:
            _number("tp", "Base TP", values, max_value=128)
            _number("fa_threshold", "Threshold (tokens)", values, step=512)
        with right:
            _number("fa_pool", "Pool GPUs", values, max_value=4096)
    else:
        st.caption("Heterogeneous pipelines are edited in the YAML.")
    st.markdown("**Workload**")
    left, right = st.columns(2)
    with left:
        _number("requests", "Requests", values, max_value=10_000_000)
        _number("output", "Output tokens", values, max_value=10_000_000, step=32)
    with right:
        _number("prompt", "Prompt tokens", values, max_value=10_000_000, step=256)
        _select("arrival", "Arrivals", list(ARRIVALS), values)
    if values.get("arrival") == "poisson":
        _number("rate", "Rate (requests/s)", values, min_value=0.01, step=0.5, fmt="%.2f")


def yaml_editor(file_name: str) -> None:
    """The scenario as editable YAML, with a download button."""
    st.text_area("Scenario YAML", key=EDITOR, height=360, on_change=_on_editor,
                 help="Edit and press Ctrl+Enter (or click outside) to apply.")
    st.download_button("Download YAML", st.session_state[SCENARIO_YAML],
                       file_name=file_name, mime="application/x-yaml")


def search_notice() -> tuple[str, str] | None:
    return st.session_state.get(SEARCH_NOTICE)


def set_search_notice(label: str, command: str) -> None:
    st.session_state[SEARCH_NOTICE] = (label, command)
