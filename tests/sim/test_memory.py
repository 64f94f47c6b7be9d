"""Memory per GPU: weight shards, KV capacity, and layouts that do not fit."""

from __future__ import annotations

import pytest

from twinfer.sim.memory import plan_memory, stage_weight_bytes
from twinfer.sim.profile import load_profile
from twinfer.spec import SchedulerSpec, SpecError, model_preset, scenario_from_dict


def scenario(model, gpu, count, **layout):
    return scenario_from_dict({"model": model, "cluster": {"nodes": [{"gpu": gpu,
                                                                      "count": count}]},
                               "layout": {"kind": "uniform", **layout}})


def test_llama3_8b_tp2_shard_by_hand():
    s = scenario("llama-3-8b", "h200-sxm", 2, tp=2)
    stage = s.placement().pipelines[0].stages[0]
    # per layer on one of 2 GPUs: QKV 4096 x (2048 + 2 x 512), O 2048 x 4096,
    # gate+up 4096 x 14336, down 7168 x 4096, two norms; plus half the embedding
    # and half the LM head (64128 x 4096 each) and the final norm; bf16
    layer = 4096 * 3072 + 2048 * 4096 + 4096 * 14336 + 7168 * 4096 + 2 * 4096
    expect = (32 * layer + 2 * 64128 * 4096 + 4096) * 2
    assert stage_weight_bytes(s.model, stage, True, True) == expect == 8_030_527_488
    profiles = {"h200-sxm": load_profile("h200-sxm")}
    [plan] = plan_memory(s.model, s.placement(), s.cluster, profiles, s.scheduler)
    gpu = plan.gpus[0]
    assert gpu.kv_bytes_per_token == 32 * 2 * 4 * 128 * 2
    assert gpu.usable_bytes == int(profiles["h200-sxm"].device.memory_bytes * 0.9)
    assert gpu.kv_capacity_bytes == gpu.usable_bytes - gpu.weights_bytes - gpu.workspace_bytes
    assert plan.kv_tokens == plan.kv_blocks * 16 <= gpu.kv_tokens


def test_pipeline_stages_split_the_weights():
    s = scenario("llama-3-70b", "h100-sxm", 16, tp=8, pp=2)
    first, last = s.placement().pipelines[0].stages
    m = s.model
    w0 = stage_weight_bytes(m, first, True, False)
    w1 = stage_weight_bytes(m, last, False, True)
    assert w0 + w1 == pytest.approx(m.weight_bytes / 8, rel=1e-3)


def test_a_layout_that_does_not_fit_says_so():
    s = scenario("llama-3-70b", "h100-sxm", 1, tp=1)
    profiles = {"h100-sxm": load_profile("h100-sxm")}
    with pytest.raises(SpecError) as err:
        plan_memory(s.model, s.placement(), s.cluster, profiles, s.scheduler)
    msg = str(err.value)
    assert msg.startswith("layout: ") and "GiB per GPU" in msg and "h100-sxm has" in msg
    assert "use more tp/pp or a smaller model" in msg


def test_a_request_longer_than_the_kv_cache():
    s = scenario("llama-3-8b", "h100-sxm", 1, tp=1)
    profiles = {"h100-sxm": load_profile("h100-sxm")}
    with pytest.raises(SpecError, match="longest request needs"):
        plan_memory(s.model, s.placement(), s.cluster, profiles, SchedulerSpec(), 10**9)


def test_memory_shrinks_with_more_gpus():
    model = model_preset("llama-3-70b")
    per_gpu = []
    for tp in (2, 4, 8):
        s = scenario("llama-3-70b", "h200-sxm", tp, tp=tp)
        per_gpu.append(stage_weight_bytes(model, s.placement().pipelines[0].stages[0], True,
                                          True))
    assert per_gpu == sorted(per_gpu, reverse=True)
