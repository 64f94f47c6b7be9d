"""The twin's runs behind the pages, cached by Streamlit.

Every cached function takes the scenario as its YAML text and a stamp of the
shipped profiles (name, modification time, size), so a what-if change that lands on
a scenario seen before re-renders from the cache, and a re-calibrated profile
invalidates what was computed with the old one. A ``SpecError`` is not cached: the
page shows its one line and the next edit is tried afresh.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from twinfer.calibration.replay import check_results
from twinfer.compare import Comparison, compare
from twinfer.sim import SimResult, simulate
from twinfer.sim.profile import Profile, load_profile, profile_from_dict, shipped_profiles
from twinfer.spec import Scenario, SpecError
from twinfer.ui import seqsweep
from twinfer.ui.editor import parse
from twinfer.ui.timeline import Bar, bars_from_log, row_order


@dataclass(frozen=True)
class TwinRun:
    """One SimPy run of a scenario, ready to draw."""

    result: SimResult
    bars: list[Bar]
    rows: list[str]


def profiles_stamp() -> tuple[tuple[str, int, int], ...]:
    """What the shipped profiles are right now (cache key part)."""
    out = []
    for name, path in shipped_profiles().items():
        stat = path.stat()
        out.append((name, stat.st_mtime_ns, stat.st_size))
    return tuple(out)


def scenario_of(yaml_text: str) -> Scenario:
    parsed = parse(yaml_text)
    if parsed.scenario is None:
        raise SpecError("", parsed.error)
    return parsed.scenario


@st.cache_data(max_entries=64, show_spinner=False)
def run_twin(yaml_text: str, stamp: tuple) -> TwinRun:
    """Simulate the scenario with the SimPy engine, keeping its event log."""
    scenario = scenario_of(yaml_text)
    log: list[tuple] = []
    result = simulate(scenario, log=log)
    bars = bars_from_log(scenario, log)
    return TwinRun(result, bars, row_order(scenario, bars))


def trace_json(yaml_text: str) -> bytes:
    """The run's Chrome/Perfetto trace; made only when the user downloads it (writing
    it costs more than the simulation)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        simulate(scenario_of(yaml_text), trace=path)
        return path.read_bytes()


@st.cache_data(max_entries=32, show_spinner=False)
def layout_choices(yaml_text: str, stamp: tuple) -> dict[str, dict]:
    return seqsweep.layout_choices(scenario_of(yaml_text))


@st.cache_data(max_entries=32, show_spinner=False)
def seq_lengths(yaml_text: str) -> list[int]:
    return seqsweep.seq_lengths(scenario_of(yaml_text))


@st.cache_data(max_entries=256, show_spinner=False)
def seq_points(yaml_text: str, label: str, layout_json: str, lengths: tuple[int, ...],
               stamp: tuple) -> list[seqsweep.SeqPoint]:
    """One layout's points over the lengths (cached per layout, so adding a layout
    to the chart computes only that one)."""
    scenario = scenario_of(yaml_text)
    layout = json.loads(layout_json)
    return [seqsweep.predict_point(scenario, label, layout, n) for n in lengths]


@st.cache_data(max_entries=256, show_spinner=False)
def compare_bytes(data: bytes, name: str, profile: str, stamp: tuple) -> Comparison:
    """``twinfer.compare`` on an executor results JSON given as bytes; ``profile``: a
    shipped profile for every GPU type, or "" for the scenario's own."""
    try:
        doc = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f" at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise SpecError(name, f"is not valid JSON{where}",
                        "give a results JSON written by `twinfer exec`") from None
    check_results(doc, name)
    return compare(doc, load_profile(profile) if profile else None, source=name)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


@st.cache_data(max_entries=64, show_spinner=False)
def profile_from_bytes(data: bytes, name: str) -> Profile:
    """An uploaded profile JSON, validated (a SpecError names what is wrong)."""
    try:
        doc = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f" at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise SpecError(f"profile {name}", f"is not valid JSON{where}",
                        "upload a file written by `twinfer calibrate`") from None
    return profile_from_dict(doc, f"profile {name}")
