"""FA Pool in the twin: which work goes to the pool, its cost by hand on the toy
profile, pool memory, and pool GPUs contended for in the engine (exact event log)."""

from __future__ import annotations

import pytest
from sim_profiles import make_profile

from twinfer.sim.cost import CostModel
from twinfer.sim.fa_pool import PARTIAL_BYTES, FaPoolStageCost, PoolSpec, check_pool_fits
from twinfer.sim.layouts import PoolEngine, PoolTwin
from twinfer.sim.memory import GpuMemory
from twinfer.sim.simulate import simulate
from twinfer.sim.stage import StageCost, StageSpec, StepBatch
from twinfer.sim.twin import build_twin
from twinfer.spec import FaPoolLayout, SpecError, UniformLayout, model_preset, scenario_from_dict

MODEL = model_preset("tiny-gqa")  # 4 layers, hidden 128, 8 / 2 heads x 16, fp32
TOY = make_profile()  # GPU type "toy-gpu": 1 TB/s, 100 TFLOP/s, 80 GiB


def _stage(pool_size: int = 4, threshold: int = 100) -> FaPoolStageCost:
    cost = CostModel(make_profile(), MODEL.dtype)
    layout = FaPoolLayout(base=UniformLayout(tp=1), pool_gpus=list(range(1, 1 + pool_size)),
                          threshold_tokens=threshold)
    pool = PoolSpec(layout, cost, "infiniband", "infiniband", 1)
    return FaPoolStageCost(StageSpec(MODEL, 1, MODEL.layers, "nvlink", True, True), cost, pool)


def test_short_sequences_stay_on_the_base():
    stage = _stage()
    plain = StageCost(stage.spec, stage.cost)
    batch = StepBatch(3, 3 * 90, ((50, 0),), 50, 3)
    assert stage.attention_s(batch) == plain.attention_s(batch)
    assert stage.pool_demand(batch) == (0, 0.0)


def test_long_decode_spreads_over_the_pool():
    stage = _stage()
    pc = stage.pool.cost
    batch = StepBatch(3, 3 * 250, (), 0, 3)
    # 250 tokens, threshold 100 -> p = 3 pool GPUs each; 9 blocks over 4 GPUs -> 3 per
    # GPU of b = ceil(250 / 3) = 84 tokens; 2 merge levels
    attend = pc.decode_attention_s(3, 84, 8, 2, 16)
    row = (MODEL.q_dim + MODEL.heads) * PARTIAL_BYTES
    merge = 2 * pc.elementwise_s(2 * 3 * row)
    gpus, pool_s = stage.pool_demand(batch)
    assert gpus == 4
    assert pool_s == pytest.approx(MODEL.layers * (attend + merge), rel=1e-12)
    # the base waits for the round trip: queries to 3 GPUs and K/V out, 2 merge
    # levels, results back (infiniband: 5 us + bytes / 10 GB/s each)
    out = 3 * (3 * MODEL.q_dim + 2 * MODEL.kv_dim) * 4
    trip = 4 * 5e-6 + (out + 2 * 3 * row + 3 * MODEL.q_dim * 4) / 10e9
    base = StageCost(stage.spec, stage.cost).attention_s(StepBatch(0, 0))
    assert stage.attention_s(batch) == pytest.approx(
        base + MODEL.layers * (attend + merge + trip), rel=1e-9)


def _scenario(pool: list[int], replicas: int = 1, prompt: int = 600, gpu: str = "toy-gpu"):
    return scenario_from_dict({
        "model": "tiny-gqa",
        "cluster": {"nodes": [{"gpu": gpu, "count": replicas + len(pool)}]},
        "layout": {"kind": "fa_pool", "base": {"tp": 1, "replicas": replicas},
                   "pool_gpus": pool, "threshold_tokens": 256, "policy": "all"},
        "workload": {"requests": 2, "prompt_tokens": prompt, "output_tokens": 3},
    })


def test_pool_memory_adds_to_the_kv_capacity():
    twin = build_twin(_scenario([1, 2]), TOY)
    base = build_twin(_scenario([1, 2]).with_layout(UniformLayout(tp=1)), TOY)
    assert isinstance(twin, PoolTwin) and [m.gpu for m in twin.pool_memory] == [1, 2]
    pool_blocks = sum(m.kv_tokens for m in twin.pool_memory) // 16
    assert twin.memory[0].kv_blocks == base.memory[0].kv_blocks + pool_blocks


def test_a_block_too_big_for_a_pool_gpu_is_refused():
    kv_per_token = MODEL.kv_bytes_per_token
    pool = [GpuMemory(g, "toy", 0, 0, 0, 0, 1000 * kv_per_token, kv_per_token) for g in (1, 2)]
    layout = FaPoolLayout(base=UniformLayout(tp=1), pool_gpus=[1, 2], threshold_tokens=100)
    check_pool_fits(layout, pool, 1800)  # p = 2 GPUs of 900 tokens: fits
    with pytest.raises(SpecError, match="2500 tokens of KV on each of 2 pool GPUs"):
        check_pool_fits(layout, pool, 5000)


def test_two_pipelines_take_turns_on_a_pool_of_one():
    log: list = []
    result = simulate(_scenario([2], replicas=2), TOY, log=log)
    pool = [e for e in log if e[1] == "pool_start"]
    # both base pipelines prefill together; the pool's one GPU serves one at a time
    assert [e[2] for e in pool[:2]] == [0, 1]
    stage = build_twin(_scenario([2], replicas=2), TOY).pipelines[0].stages[0]
    first_step = StepBatch(0, 0, ((600, 0),), 600, 1)
    _, pool_s = stage.pool_demand(first_step)
    assert pool[1][0] == pytest.approx(pool[0][0] + pool_s, rel=1e-9)
    pool_gpu = [g for g in result.gpus if g.gpu == 2]
    assert len(pool_gpu) == 1 and 0 < pool_gpu[0].busy_fraction <= 1


def test_pool_engine_is_used_for_fa_pool_only():
    from twinfer.sim.layouts import engine_for

    assert engine_for(build_twin(_scenario([1]), TOY)) is PoolEngine
    uniform = _scenario([1]).with_layout(UniformLayout())
    assert engine_for(build_twin(uniform, TOY)) is not PoolEngine
