"""Profile schema v1: shipped profiles validate; bad files are one-line SpecErrors."""

from __future__ import annotations

import json

import pytest
from sim_profiles import make_profile

from twinfer.sim.profile import SCHEMA_VERSION, load_profile, save_profile, shipped_profiles
from twinfer.spec import SpecError


def test_shipped_profiles_validate_and_say_where_they_come_from():
    shipped = shipped_profiles()
    assert {"h100-sxm", "h200-sxm", "a100-sxm-80g", "l40s"} <= set(shipped)
    for name in shipped:
        p = load_profile(name)
        assert p.name == name and p.schema_version == SCHEMA_VERSION
        assert p.notes, f"{name} must say how its numbers were obtained"
        assert p.device.memory_bytes > 0 and p.peaks.copy_bytes_per_s > 0
        assert p.peaks.matmul_flops_per_s
    for name in ("a100-sxm-80g", "l40s"):
        p = load_profile(name)
        assert p.source == "datasheet" and any("DATASHEET" in n for n in p.notes)


def test_the_coarse_figures_survive_in_a_profile_document():
    """The issue's first H200 measurements, as the coarse profile held them (now
    superseded by a measured file): the schema takes them as they were written."""
    coarse = make_profile(
        name="h200-sxm", source="coarse first measurements",
        device={"name": "NVIDIA H200", "memory_bytes": 143771 * 2**20, "sm_count": 132},
        peaks={"copy_bytes_per_s": 4.2e12, "matmul_flops_per_s": {"bf16": 771e12}},
        ops={"gemm": {"dtype": "bf16", "samples": [
            {"m": 64, "n": 14336, "k": 4096, "time_s": 40e-6}]}},
        collectives={"nvlink": {"all_reduce": {"2": {
            "alpha_s": 3.19e-5, "bytes_per_s": 3.308e11, "residual_rel": 0.29,
            "samples": [{"bytes": b, "time_s": t} for b, t in
                        [(4096, 21e-6), (1 << 20, 46e-6), (16 << 20, 77e-6),
                         (256 << 20, 892e-6)]]}}}})
    assert coarse.collective("nvlink", "all_reduce", 2).samples[-1].time_s == 892e-6
    assert coarse.collective("nvlink", "all_reduce", 4) is None


def test_save_is_atomic_and_round_trips(tmp_path):
    p = make_profile()
    path = save_profile(p, tmp_path / "toy.json")
    assert [f.name for f in tmp_path.iterdir()] == ["toy.json"]  # no temporary left over
    assert load_profile(path) == p


@pytest.mark.parametrize(("content", "expect"), [
    ("{not json", "not valid JSON"),
    ('{"hello": 1}', "not a twinfer profile"),
    ('{"schema_version": 2, "name": "x"}', "schema_version: is 2; this twinfer reads version 1"),
    ("[1, 2]", "not a twinfer profile"),
])
def test_bad_profile_files(tmp_path, content, expect):
    path = tmp_path / "p.json"
    path.write_text(content)
    with pytest.raises(SpecError) as err:
        load_profile(path)
    assert expect in str(err.value) and "p.json" in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_keys_and_bad_values_are_refused(tmp_path):
    doc = make_profile().model_dump(mode="json")
    doc["peaks"]["copy_gbps"] = 3
    path = tmp_path / "p.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(SpecError, match="peaks.copy_gbps: unknown key"):
        load_profile(path)
    doc = make_profile().model_dump(mode="json")
    doc["collectives"]["nvlink"]["all_reduce"] = {"two": {"alpha_s": 0, "bytes_per_s": 1}}
    path.write_text(json.dumps(doc))
    with pytest.raises(SpecError, match="group size"):
        load_profile(path)


def test_unknown_profile_name():
    with pytest.raises(SpecError, match="neither a file nor a shipped profile"):
        load_profile("tpu-v9")
