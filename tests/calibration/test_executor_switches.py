"""The executor switches a profile's overheads were fitted to, and `twinfer compare`'s
note when a run's differ (PDL on in one, off in the other: another executor)."""

from __future__ import annotations

import pytest

from twinfer.calibration.overheads import executor_switches
from twinfer.compare import executor_notes
from twinfer.sim.profile import load_profile
from twinfer.spec import SpecError

PDL_ON = {"env": {"TWINFER_TRACEBACK": "1"}, "pdl": "graphs", "pdl_trigger": "end",
          "pdl_max_batch": 1 << 30}


def _doc(name: str, switches: dict | None) -> dict:
    doc = {"scenario": {"name": name}}
    if switches is not None:
        doc["switches"] = switches
    return doc


def test_runs_of_one_executor_give_their_switches_without_env():
    docs = [_doc("a", PDL_ON), _doc("b", {**PDL_ON, "env": {}})]
    assert executor_switches(docs) == {"pdl": "graphs", "pdl_max_batch": 1 << 30,
                                       "pdl_trigger": "end"}
    assert executor_switches([_doc("old", None)]) is None  # results from before


def test_runs_of_different_executors_are_refused():
    with pytest.raises(SpecError, match=r"runs a and b ran different executor switches "
                                        r"\(pdl 'graphs' / 'off'\)"):
        executor_switches([_doc("a", PDL_ON), _doc("b", {**PDL_ON, "pdl": "off"})])


def test_compare_notes_a_run_whose_executor_differs():
    base = load_profile("h100-sxm")
    fitted = {"pdl": "graphs", "pdl_trigger": "end", "pdl_max_batch": 1 << 30}
    profile = base.model_copy(update={"overheads": base.overheads.model_copy(
        update={"executor": fitted})})
    assert executor_notes(_doc("same", PDL_ON), profile) == ()
    assert executor_notes(_doc("old", None), profile) == ()
    (note,) = executor_notes(_doc("off", {**PDL_ON, "pdl": "off"}), profile)
    assert "pdl 'off' (run) vs 'graphs' (profile)" in note
    bare = base.model_copy(update={"overheads": base.overheads.model_copy(
        update={"executor": None})})
    assert executor_notes(_doc("off", {**PDL_ON, "pdl": "off"}), bare) == ()


def test_compare_notes_samples_of_another_kernel_build():
    from twinfer.compare import kernel_notes

    base = load_profile("h100-sxm")
    ops = base.ops.model_copy(update={  # decode attention swept with build aaaa, the rest bbbb
        kind: getattr(base.ops, kind).model_copy(update={
            "kernels": "aaaa" if kind == "decode_attention" else "bbbb"})
        for kind in type(base.ops).model_fields})
    profile = base.model_copy(update={"ops": ops})
    assert kernel_notes({"versions": {"kernels": "bbbb"}}, profile) == (
        "h100-sxm's decode_attention samples were taken with another build of the kernels "
        "than this run's (bbbb): re-sweep them (twinfer calibrate --ops decode_attention) "
        "for a fair comparison",)
    assert kernel_notes({"versions": {"kernels": "aaaa"}}, profile)[0].startswith(
        "h100-sxm's gemm, prefill_attention, elementwise samples")
    assert kernel_notes({"versions": {}}, profile) == ()  # results from before
    before = base.model_copy(update={"ops": base.ops.model_copy(update={  # none recorded
        kind: getattr(base.ops, kind).model_copy(update={"kernels": None})
        for kind in type(base.ops).model_fields})})
    assert kernel_notes({"versions": {"kernels": "cccc"}}, before) == ()  # profile from before
