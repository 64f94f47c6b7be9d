"""Datasheet fallbacks for the collectives a calibration run could not measure."""

from __future__ import annotations

import pytest

from twinfer.calibration.links import NDR, NVLINK4, fill_unmeasured_links
from twinfer.sim import simulate
from twinfer.sim.cost import ring_traffic
from twinfer.sim.profile import COLLECTIVE_OPS, load_profile
from twinfer.spec import scenario_from_dict


def _fit(alpha_s: float, bw: float, samples: bool = True) -> dict:
    pts = [{"bytes": 1 << i, "time_s": alpha_s + (1 << i) / bw} for i in (12, 20, 28)]
    return {"alpha_s": alpha_s, "bytes_per_s": bw, "samples": pts if samples else [],
            "residual_rel": 0.0}


def test_one_gpu_profile_gets_datasheet_lines_with_a_sibling_alpha():
    one_gpu = {"name": "h100-sxm", "collectives": {}, "notes": []}
    sibling = {"name": "h200-sxm", "collectives": {"nvlink": {
        op: {"2": _fit(20e-6 + i * 1e-6, 300e9)} for i, op in enumerate(COLLECTIVE_OPS)}}}
    added = fill_unmeasured_links(one_gpu, {"h200-sxm": sibling})
    assert len(added) == 2 * len(COLLECTIVE_OPS)
    for i, op in enumerate(COLLECTIVE_OPS):
        fit = one_gpu["collectives"]["nvlink"][op]["2"]
        assert fit["alpha_s"] == pytest.approx(20e-6 + i * 1e-6)  # the same fabric's
        assert fit["bytes_per_s"] == pytest.approx(450e9 / ring_traffic(op, 2))
        assert "DATASHEET-DERIVED" in fit["fallback"] and "h200-sxm" in fit["fallback"]
        ib = one_gpu["collectives"]["infiniband"][op]["2"]
        assert ib["alpha_s"] == NDR.alpha_s and "estimated" in ib["fallback"]
    assert "datasheet-derived fallbacks" in one_gpu["notes"][-1]


def test_measured_lines_are_kept_and_unknown_families_left_alone():
    measured = _fit(27e-6, 296e9)
    profile = {"name": "h200-sxm", "collectives": {"nvlink": {"all_reduce": {"2": measured}}},
               "notes": []}
    fill_unmeasured_links(profile, {})
    assert profile["collectives"]["nvlink"]["all_reduce"]["2"] is measured
    assert profile["collectives"]["nvlink"]["all_gather"]["2"]["alpha_s"] == NVLINK4.alpha_s
    other = {"name": "l40s", "collectives": {}, "notes": []}
    assert fill_unmeasured_links(other, {}) == [] and other["collectives"] == {}


def test_shipped_h100_prices_tp2_from_the_fallback_and_says_so():
    assert load_profile("h100-sxm").collective("nvlink", "all_reduce", 2).fallback
    s = scenario_from_dict({
        "model": {"preset": "tiny", "dtype": "bf16"},
        "cluster": {"nodes": [{"gpu": "h100-sxm", "count": 2}]},
        "layout": {"kind": "uniform", "tp": 2},
        "workload": {"requests": 2, "prompt_tokens": 32, "output_tokens": 4}})
    result = simulate(s)
    assert any("FALLBACK" in line and "DATASHEET-DERIVED" in line for line in result.provenance)
