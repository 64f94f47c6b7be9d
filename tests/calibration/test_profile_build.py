"""Building a profile from measured groups: the sustained matmul fraction and what a
partial run (``--ops``) keeps from the profile it replaces."""

from __future__ import annotations

import pytest

from twinfer.calibration.plan import cpu_plan
from twinfer.calibration.profile_build import (
    build_profile,
    carry_over,
    sustained_fraction,
    validate_profile,
)

INFO = {"name": "Test GPU", "memory_bytes": 80 << 30}
SIDE = 8192
BURST = 2.0 * SIDE**3 / 1.5e-3  # the peaks group's square GEMM in 1.5 ms


def groups(windows: list[dict] | None = None, gemm: bool = True) -> dict[str, dict]:
    out = {"peaks": {"kind": "peaks", "samples": [
        {"op": "copy", "bytes": 2 << 30, "time_s": 1e-3},
        {"m": SIDE, "n": SIDE, "k": SIDE, "time_s": 1.5e-3}]}}
    if windows is not None:
        out["sustained"] = {"kind": "sustained", "samples": windows}
    if gemm:
        out["gemm/4096x4096"] = {"kind": "gemm", "samples": [
            {"m": m, "n": 4096, "k": 4096, "time_s": 1e-5 * m} for m in (1, 64, 4096)]}
    return out


def windows(rates: list[float]) -> list[dict]:
    return [{"t_s": 0.05 * (i + 1), "flops_per_s": r} for i, r in enumerate(rates)]


def test_sustained_fraction_is_the_settled_half_over_the_burst():
    # a GPU that starts at the burst rate and settles at 90% of it
    w = windows([BURST] * 10 + [0.9 * BURST] * 10 + [0.91 * BURST, 0.89 * BURST] * 5)
    assert sustained_fraction(w, BURST) == pytest.approx(0.9, abs=0.006)
    assert sustained_fraction(windows([1.02 * BURST] * 8), BURST) == 1.0  # never above 1


def test_the_prefill_gemms_own_burst_rate_sets_the_fraction():
    """The sustained run cycles a prefill's GEMMs and reports their burst rate (timed as
    the sweeps time them): the fraction is over that, not over the square GEMM's peak."""
    mix_burst = 0.8 * BURST
    w = windows([0.76 * BURST] * 8) + [{"burst_flops_per_s": mix_burst, "gemms": "QKV..."}]
    doc = build_profile(groups(w), INFO, cpu_plan(), "test-gpu", [])
    assert doc["peaks"]["sustained_matmul_fraction"] == pytest.approx(0.95)
    assert doc["peaks"]["sustained_burst_flops_per_s"] == pytest.approx(mix_burst)
    profile = validate_profile(doc)
    assert profile.peaks.sustained_gemms == "QKV..."
    assert len(profile.peaks.sustained_samples) == 8


def test_profile_carries_the_fraction_and_its_windows():
    w = windows([0.95 * BURST] * 8)
    doc = build_profile(groups(w), INFO, cpu_plan(), "test-gpu", [])
    assert doc["peaks"]["sustained_matmul_fraction"] == pytest.approx(0.95)
    assert len(doc["peaks"]["sustained_samples"]) == 8
    profile = validate_profile(doc)
    assert profile.peaks.sustained_matmul_fraction == pytest.approx(0.95)
    # a CPU run measures no windows: the field keeps its default of 1
    assert validate_profile(build_profile(groups([]), INFO, cpu_plan(), "cpu", [])) \
        .peaks.sustained_matmul_fraction == 1.0


def test_partial_run_keeps_the_op_kinds_it_did_not_measure():
    before = build_profile(groups(windows([0.9 * BURST] * 4)), INFO, cpu_plan(), "g", [])
    before["peaks"]["matmul_flops_per_s"]["fp32"] = 9e15  # the GEMM sweep's best
    now = build_profile(groups(windows([0.8 * BURST] * 4), gemm=False), INFO, cpu_plan(),
                        "g", [])
    assert "gemm" not in now["ops"]
    carry_over(now, before)
    assert now["ops"]["gemm"] == before["ops"]["gemm"]
    assert now["peaks"]["matmul_flops_per_s"]["fp32"] == 9e15
    assert now["peaks"]["sustained_matmul_fraction"] == pytest.approx(0.8)  # measured now
    assert any("op samples carried over" in n and "gemm" in n for n in now["notes"])
    validate_profile(now)


def test_each_op_section_records_the_kernels_that_measured_it():
    from twinfer.fingerprint import kernels_fingerprint

    doc = build_profile(groups(windows([0.95 * BURST] * 8)), INFO, cpu_plan(), "test-gpu", [])
    assert doc["ops"] and all(section["kernels"] == kernels_fingerprint()
                              for section in doc["ops"].values())
    profile = validate_profile(doc)
    assert profile.ops.gemm.kernels == kernels_fingerprint()


def test_a_recalibration_keeps_every_fitted_overhead():
    """The overheads come from executor runs, not sweeps: a re-sweep keeps them, also
    when the fit left ``step_s`` and ``per_layer_s`` at zero (the CPU profile fits a
    stage delay, a follower's step and a prefill floor instead)."""
    before = build_profile(groups(windows([0.9 * BURST] * 4)), INFO, cpu_plan(), "g", [])
    before["overheads"].update({"follower_step_s": 0.0059, "stage_step_s": 0.0016,
                                "prefill_host_s": 0.00065, "prefill_layer_s": 0.00058})
    now = build_profile(groups(windows([0.9 * BURST] * 4)), INFO, cpu_plan(), "g", [])
    carry_over(now, before)
    assert now["overheads"] == before["overheads"]
    assert any("overheads carried over" in n for n in now["notes"])
    fresh = build_profile(groups(windows([0.9 * BURST] * 4)), INFO, cpu_plan(), "g", [])
    carry_over(fresh, build_profile(groups([]), INFO, cpu_plan(), "g", []))
    assert not any("overheads carried over" in n for n in fresh["notes"])  # nothing fitted


def test_every_op_section_records_how_it_was_timed():
    """Graphed on a GPU (as the executor runs its kernels back to back), eager on the
    CPU."""
    import dataclasses

    sample = {"batch": 1, "context": 256, "q_heads": 4, "kv_heads": 2, "head_dim": 64,
              "time_s": 1e-5}
    g = groups(windows([0.95 * BURST] * 8))
    g["decode_attention/4x2x64"] = {"kind": "decode_attention", "samples": [sample]}
    cpu = build_profile(g, INFO, cpu_plan(), "t", [])
    assert cpu["ops"]["decode_attention"]["timing"] == "eager"
    gpu = build_profile(g, INFO, dataclasses.replace(cpu_plan(), device="cuda"), "t", [])
    assert gpu["ops"]["decode_attention"]["timing"] == "graph"
    checked = validate_profile(gpu).ops
    assert checked.decode_attention.timing == "graph"
    swept = [kind for kind in ("gemm", "prefill_attention", "elementwise") if kind in gpu["ops"]]
    assert swept and all(getattr(checked, kind).timing == "graph" for kind in swept)
