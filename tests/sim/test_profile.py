"""Profile schema v1: shipped profiles validate; bad files are one-line SpecErrors."""

from __future__ import annotations

import json

import pytest
from conftest import make_profile

from twinfer.sim.profile import SCHEMA_VERSION, load_profile, save_profile, shipped_profiles
from twinfer.spec import SpecError


def test_shipped_profiles_validate_and_say_where_they_come_from():
    shipped = shipped_profiles()
    assert {"h100-sxm", "h200-sxm", "a100-sxm-80g", "l40s"} <= set(shipped)
    for name in shipped:
        p = load_profile(name)
        assert p.name == name and p.schema_version == SCHEMA_VERSION
        assert p.notes, f"{name} must say how its numbers were obtained"
    h200 = load_profile("h200-sxm")
    assert h200.source == "coarse first measurements"
    assert h200.device.memory_bytes == 143771 * 2**20 and h200.device.sm_count == 132
    assert h200.peaks.copy_bytes_per_s == 4.2e12
    assert h200.peaks.matmul_flops_per_s["bf16"] == 771e12
    assert [s.time_s for s in h200.collectives["nvlink"]["all_reduce"]["2"].samples] == [
        21e-6, 46e-6, 77e-6, 892e-6]
    assert load_profile("h100-sxm").device.memory_bytes == 81559 * 2**20
    assert load_profile("a100-sxm-80g").source == "datasheet"
    assert any("DATASHEET" in n for n in load_profile("h100-sxm").notes)


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
