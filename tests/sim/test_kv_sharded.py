"""kv_sharded costs worked out by hand on the toy profile (1 TB/s, 100 TFLOP/s, an
NVLink all-reduce line of 10 us + bytes / 100 GB/s, nothing else measured)."""

from __future__ import annotations

import pytest
from sim_profiles import make_profile

from twinfer.sim.cost import CostModel
from twinfer.sim.kv_sharded import (
    FUSED_SIGNAL_S,
    ExchangeCost,
    KvShardedStageCost,
    link_bandwidth,
)
from twinfer.sim.stage import StageSpec, StepBatch
from twinfer.spec import model_preset

ROWS, HEAD_DIM = 4 * 32, 128  # 4 sequences x 32 query heads
NBYTES = ROWS * (HEAD_DIM + 1) * 4  # 66048 B of fp32 partials + LSEs per GPU
COMBINE_S = (2 * NBYTES + ROWS * HEAD_DIM * 2) / 1e12


@pytest.fixture
def cost():
    return CostModel(make_profile(), "bf16")


def test_link_bandwidth_is_the_send_recv_slope(cost):
    # send/recv over NVLink is not measured: derived from the all-reduce line (2 ranks,
    # ring traffic factor 1), so its slope is that line's 100 GB/s exactly
    assert link_bandwidth(cost, "nvlink") == pytest.approx(100e9, rel=1e-9)


@pytest.mark.parametrize("comm,expected_s", [
    ("allgather", 10e-6 + NBYTES / 100e9),  # derived all_gather: alpha + (r-1) x bytes / bw
    ("fused", FUSED_SIGNAL_S + NBYTES / 100e9),  # one peer, no collective latency
    ("mpi", 2 * 10e-6 + 3e-6 + 3 * NBYTES / 10e9),  # two host copies, MPI, staging
])
def test_exchange_variants(cost, comm, expected_s):
    t, combine = ExchangeCost(cost, "nvlink", 2, comm).time_s(ROWS, HEAD_DIM)
    assert t == pytest.approx(expected_s, rel=1e-9)
    assert combine == pytest.approx(COMBINE_S, rel=1e-9)
    assert any(f"kv_sharded {comm} exchange" in line for line in cost.provenance.lines())


def test_one_gpu_exchanges_nothing(cost):
    assert ExchangeCost(cost, "nvlink", 1, "allgather").time_s(ROWS, HEAD_DIM) == (0.0, 0.0)


def test_decode_attention_over_half_the_context_plus_exchange(cost):
    model = model_preset("llama-3-8b")
    stage = KvShardedStageCost(StageSpec(model, 2, 32, "nvlink", True, True), cost, "allgather")
    batch = StepBatch(4, 4 * 2000, (), 0, 4)
    # each GPU: all 32 query / 8 KV heads over 1000 of the 2000 tokens (bytes-bound)
    attend = (2 * 4 * 1000 * 8 + 2 * 4 * 32) * 128 * 2 / 1e12
    # every GPU gathers the step's Q/K/V heads: 4 tokens x (16 + 2 x 4) heads x 128 x 2 B
    qkv = 10e-6 + 4 * 24 * 128 * 2 / 100e9
    exchange = 10e-6 + NBYTES / 100e9
    per_layer = attend + COMBINE_S + exchange + qkv
    assert stage.attention_s(batch) == pytest.approx(32 * per_layer, rel=1e-9)
    _, comm = stage.step(batch)
    _, dense_comm = super(KvShardedStageCost, stage).step(batch)
    assert comm - dense_comm == pytest.approx(32 * (exchange + qkv), rel=1e-9)


def test_bench_rows_are_predicted_with_the_stage_terms(cost):
    from twinfer.sim.kvshard_check import comparison_rows, predict_us

    row = {"batch": 4, "context": 2000, "shard_tokens": 1000,
           "median_us": {"local": 20.0, "allgather": 40.0}}
    heads = {"q_heads": 32, "kv_heads": 8, "head_dim": 128}
    got = predict_us(cost, row, heads, 2)
    local = (2 * 4 * 1000 * 8 + 2 * 4 * 32) * 128 * 2 / 1e12
    assert got["local"] == pytest.approx(local * 1e6, rel=1e-9)
    assert got["allgather"] == pytest.approx((local + 10e-6 + NBYTES / 100e9 + COMBINE_S) * 1e6,
                                             rel=1e-9)
    assert got["fused"] < got["allgather"] < got["mpi"]
    doc = {"results": [row], "heads": heads, "world": 2}
    assert [r[2] for r in comparison_rows(doc, cost, "nvlink")] == ["local", "allgather"]
