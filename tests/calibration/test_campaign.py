"""The campaign's matrix: valid scenarios, memory-fit skips, argument defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from twinfer.calibration import PROFILES_DIR
from twinfer.calibration.campaign import (
    CampaignConfig,
    Runner,
    kv_fits,
    matrix_scenario,
    parse_args,
)
from twinfer.spec import scenario_from_dict


def _cfg(tmp_path: Path, **over) -> CampaignConfig:
    base = dict(out=tmp_path, device="cuda", model="llama-3-8b", layouts=("tp1", "tp2", "pp2"),
                batches=(1, 16, 64), contexts=(512, 4096, 32768), output_tokens=32,
                stages=("matrix",), time_budget_s=100.0, calibrate_budget_s=10.0, quick=False)
    return CampaignConfig(**{**base, **over})


@pytest.mark.parametrize("layout,tp,pp", [("tp1", 1, 1), ("tp2", 2, 1), ("pp2", 1, 2)])
def test_matrix_scenarios_validate(tmp_path, layout, tp, pp):
    doc = matrix_scenario(_cfg(tmp_path), "h100-sxm", "nvlink", (layout, 16, 32768, 0))
    scenario = scenario_from_dict(doc)
    assert scenario.layout.tp == tp and scenario.layout.pp == pp
    assert scenario.model.max_position >= 32768 + 32  # 32K prompts need the longer RoPE range
    assert scenario.scheduler.max_prefill_tokens >= 32768  # one 32K prompt per prefill step
    assert scenario.cluster.num_gpus == tp * pp


def test_overhead_runs_override_the_layer_count(tmp_path):
    doc = matrix_scenario(_cfg(tmp_path), "h100-sxm", "nvlink", ("tp1", 4, 256, 8))
    scenario = scenario_from_dict(doc)
    assert scenario.model.layers == 8 and doc["name"].endswith("_L8")
    assert scenario.scheduler.max_prefill_tokens == 256  # one prompt per prefill step


def test_points_whose_kv_does_not_fit_are_skipped(tmp_path):
    cfg = _cfg(tmp_path)
    h100 = PROFILES_DIR / "h100-sxm.json"
    small = matrix_scenario(cfg, "h100-sxm", "nvlink", ("tp1", 1, 512, 0))
    huge = matrix_scenario(cfg, "h100-sxm", "nvlink", ("tp1", 64, 32768, 0))
    assert kv_fits(small, h100) == ""
    assert "the cache holds" in kv_fits(huge, h100)


def test_runner_keeps_existing_results_and_respects_the_budget(tmp_path):
    cfg = _cfg(tmp_path, time_budget_s=0.0)
    runner = Runner(cfg, start_s=0.0)
    done = tmp_path / "done.json"
    done.write_text("{}")
    doc = {"name": "x"}
    assert runner.run(doc, done) is True
    assert runner.run(doc, tmp_path / "new.json") is False
    assert [e["status"] for e in runner.log] == ["kept", "skipped: time budget"]


def test_defaults_follow_the_device(tmp_path):
    cpu = parse_args(["--out", str(tmp_path), "--device", "cpu"])
    assert cpu.model == "tiny" and cpu.contexts == (64, 256) and cpu.batches == (1, 4)
    gpu = parse_args(["--out", str(tmp_path), "--device", "cuda"])
    assert gpu.model == "llama-3-8b" and gpu.contexts == (512, 4096, 32768)
    assert gpu.batches == (1, 16, 64) and gpu.output_tokens == 32


def test_overhead_runs_cover_batch_sizes_and_pipeline_stages(tmp_path, monkeypatch):
    """On two GPUs the campaign's overhead stage runs TP=1 at two layer counts and two
    batch sizes, TP=2, PP=2 at two batch sizes, and TP=1 / TP=2 without graphs; each
    overhead run prefills one prompt per step."""
    import twinfer.calibration.campaign as camp
    import twinfer.calibration.overheads as ov

    ran = []

    def run(self, doc, out, extra=()):
        ran.append((doc["name"], extra, doc["scheduler"]["max_prefill_tokens"]))
        return False  # nothing written: nothing to fit

    monkeypatch.setattr(camp.Runner, "run", run)
    monkeypatch.setattr(camp, "_device_count", lambda device: 2)
    monkeypatch.setattr(ov, "fit_overheads_into", lambda *a, **k: pytest.fail("no results"))
    cfg = _cfg(tmp_path, stages=("overheads",))
    camp.stage_overheads(cfg, camp.Runner(cfg, 0.0), (PROFILES_DIR / "h200-sxm.json",
                                                      "h200-sxm", "nvlink"))
    names = [(name.removeprefix("llama-3-8b_"), bool(extra)) for name, extra, _ in ran]
    assert names == [("tp1_b4_c256_L8", False), ("tp1_b4_c256_L32", False),
                     ("tp1_b32_c256_L8", False), ("tp2_b4_c256_L32", False),
                     ("pp2_b4_c256_L32", False), ("pp2_b32_c256_L32", False),
                     ("tp1_b4_c256_L32", True), ("tp2_b4_c256_L32", True)]
    assert {tokens for *_, tokens in ran} == {256}
