"""The execution-time predictor against numbers worked out by hand (toy profile:
1 TB/s copy, 100 TFLOP/s, all-reduce alpha 10 us at 100 GB/s)."""

from __future__ import annotations

import pytest
from sim_profiles import make_profile

from twinfer.sim.cost import CostModel, ring_traffic
from twinfer.sim.stage import StageCost, StageSpec, StepBatch
from twinfer.spec import LinkSpec, SpecError, model_preset

approx = pytest.approx


def test_gemm_roofline_without_samples(toy_profile):
    c = CostModel(toy_profile, "bf16")
    # m=1: memory-bound, (1*4096 + 4096*4096 + 1*4096) * 2 bytes at 1 TB/s
    assert c.gemm_s(1, 4096, 4096) == approx(33_570_816 / 1e12)
    # 8192^3: compute-bound, 2 m n k at 100 TFLOP/s
    assert c.gemm_s(8192, 8192, 8192) == approx(2 * 8192**3 / 100e12)
    assert any("roofline (no samples), memory 1.00 TB/s (copy peak)" in line
               for line in c.provenance.lines())


def test_gemm_interpolates_measured_shape_and_scales_beyond():
    samples = [{"m": 1, "n": 1024, "k": 1024, "time_s": 10e-6},
               {"m": 100, "n": 1024, "k": 1024, "time_s": 1000e-6}]
    c = CostModel(make_profile(ops={"gemm": {"dtype": "bf16", "samples": samples}}), "bf16")
    assert c.gemm_s(10, 1024, 1024) == approx(100e-6)  # halfway in log m: geometric mean
    assert c.gemm_s(1, 1024, 1024) == approx(10e-6)
    # beyond m=100: the m=100 time grown like the roofline whose memory ceiling is the
    # best memory-bound sample (m=1: 2,101,248 bytes in 10 us)
    bw = (1024 + 1024 * 1024 + 1024) * 2 / 10e-6

    def roofline(m):
        return max(2 * m * 1024 * 1024 / 100e12, (m * 1024 * 2 + 1024 * 1024) * 2 / bw)

    assert c.gemm_s(1000, 1024, 1024) == approx(1000e-6 * roofline(1000) / roofline(100))
    # an unmeasured shape: that roofline directly, and the provenance says so
    assert c.gemm_s(1, 2048, 1024) == approx(roofline_shape(1, 2048, 1024, bw))
    lines = "\n".join(c.provenance.lines())
    assert "interpolated over 2 measured m" in lines
    assert "outside measured range [1, 100]" in lines
    assert "n=2048 k=1024: roofline (no samples of this shape), memory 0.21 TB/s (best " \
        "memory-bound sample)" in lines


def test_sustained_fraction_slows_compute_bound_work_only():
    """A GPU that keeps 80% of its burst matmul rate: a GEMM at the peak rate takes
    1/0.8 as long, one at 1% of it barely changes; prefill attention likewise. Samples
    timed back to back in a CUDA graph already carry it."""
    m_big, n, k = 10_000, 1000, 1000
    at_peak = 2.0 * m_big * n * k / 100e12  # runs at exactly the 100 TFLOP/s peak
    samples = [{"m": 1, "n": n, "k": k, "time_s": 2e-4},  # 1e-4 of the peak
               {"m": m_big, "n": n, "k": k, "time_s": at_peak}]
    prefill = [{"tokens": t, "q_heads": 8, "kv_heads": 8, "head_dim": 128, "time_s": 2e-3}
               for t in (1024, 8192)]
    ops = {"gemm": {"dtype": "bf16", "samples": samples},
           "prefill_attention": {"samples": prefill}}
    burst = CostModel(make_profile(ops=ops), "bf16")
    peaks = {"copy_bytes_per_s": 1e12, "matmul_flops_per_s": {"bf16": 100e12},
             "sustained_matmul_fraction": 0.8}
    held = CostModel(make_profile(ops=ops, peaks=peaks), "bf16")
    assert held.gemm_s(m_big, n, k) == approx(at_peak / 0.8)
    assert held.gemm_s(1, n, k) == approx(2e-4 * (1 + 0.25 * 1e-4))
    flops = 2.0 * 8192**2 * 8 * 128  # 1.1e11 in 2 ms: 55% of the peak
    busy = flops / 2e-3 / 100e12
    assert held.prefill_attention_s(8192, 8, 8, 128) == approx(2e-3 * (1 + 0.25 * busy))
    assert burst.prefill_attention_s(8192, 8, 8, 128) == approx(2e-3)
    # samples timed back to back in a CUDA graph ran at a sustained draw: kept as they are
    graphed = {"gemm": {**ops["gemm"], "timing": "graph"},
               "prefill_attention": {**ops["prefill_attention"], "timing": "graph"}}
    kept = CostModel(make_profile(ops=graphed, peaks=peaks), "bf16")
    assert kept.gemm_s(m_big, n, k) == approx(at_peak)
    assert kept.prefill_attention_s(8192, 8, 8, 128) == approx(2e-3)
    # a shape without samples is a roofline (a burst rate): slowed as before
    assert kept.gemm_s(m_big, 2 * n, k) == approx(held.gemm_s(m_big, 2 * n, k))
    assert kept.gemm_s(m_big, 2 * n, k) > burst.gemm_s(m_big, 2 * n, k)


def line(alpha_s: float, bytes_per_s: float, sizes) -> list[dict]:
    """Collective samples on an alpha-beta line at ``sizes``."""
    return [{"bytes": b, "time_s": alpha_s + b / bytes_per_s} for b in sizes]


def test_graphed_collectives_use_the_graph_replayed_samples_in_their_range():
    eager = line(25e-6, 300e9, (4096, 65536, 1 << 20, 16 << 20))
    graph = line(8e-6, 300e9, (4096, 65536, 1 << 20))
    coll = {"nvlink": {"all_reduce": {"2": {"alpha_s": 25e-6, "bytes_per_s": 300e9,
                                            "samples": eager, "graph_samples": graph}}}}
    c = CostModel(make_profile(collectives=coll), "bf16")
    assert c.collective_s("all_reduce", 65536, 2, "nvlink", graphed=True) == approx(
        8e-6 + 65536 / 300e9)
    assert c.collective_s("all_reduce", 65536, 2, "nvlink") == approx(25e-6 + 65536 / 300e9)
    # beyond the largest graph-replayed size: the eager samples
    assert c.collective_s("all_reduce", 16 << 20, 2, "nvlink", graphed=True) == approx(
        25e-6 + (16 << 20) / 300e9)
    assert "graph-replayed sizes" in "\n".join(c.provenance.lines())
    # a TP=2 decode step prices its all-reduces as replayed when the executor graphs
    # them (overheads.cuda_graphs), a prefill step as launched one by one
    spec = StageSpec(model_preset("llama-3-8b"), 2, 32, "nvlink", True, True)
    graphs = {"cuda_graphs": True, "step_s": 0.0}
    with_graphs = StageCost(spec, CostModel(make_profile(collectives=coll,
                                                         overheads=graphs), "bf16"))
    eager_only = StageCost(spec, CostModel(make_profile(collectives=coll), "bf16"))
    decode = StepBatch(decode_n=1, decode_ctx_sum=512, logits_n=1)
    saved = (25e-6 - 8e-6) * 2 * 32  # two all-reduces per layer, 8 KB each
    assert eager_only.step(decode)[1] - with_graphs.step(decode)[1] == approx(saved, rel=0.02)
    prefill = StepBatch(0, 0, ((512, 0),), 512, 1)
    assert with_graphs.step(prefill)[1] == approx(eager_only.step(prefill)[1])



def test_all_reduces_up_to_the_one_shot_range_are_priced_as_the_executor_sends_them():
    """The executor sends all-reduces up to the largest size its one-shot symmetric-memory
    kernel was calibrated at through that kernel, the rest through NCCL."""
    eager = line(25e-6, 300e9, (4096, 65536, 1 << 20, 16 << 20))
    graph = line(8e-6, 300e9, (4096, 65536, 1 << 20))
    oneshot = line(6e-6, 200e9, (4096, 65536, 262144))
    oneshot_graph = line(3e-6, 200e9, (4096, 65536, 262144))
    coll = {"nvlink": {"all_reduce": {"2": {
        "alpha_s": 25e-6, "bytes_per_s": 300e9, "samples": eager, "graph_samples": graph,
        "oneshot_samples": oneshot, "oneshot_graph_samples": oneshot_graph}}}}
    c = CostModel(make_profile(collectives=coll), "bf16")
    assert c.collective_s("all_reduce", 65536, 2, "nvlink", graphed=True) == approx(
        3e-6 + 65536 / 200e9)
    assert c.collective_s("all_reduce", 65536, 2, "nvlink") == approx(6e-6 + 65536 / 200e9)
    # above the one-shot range: NCCL, replayed or eager
    assert c.collective_s("all_reduce", 1 << 20, 2, "nvlink", graphed=True) == approx(
        8e-6 + (1 << 20) / 300e9)
    assert c.collective_s("all_reduce", 16 << 20, 2, "nvlink") == approx(
        25e-6 + (16 << 20) / 300e9)
    assert "one-shot symm-mem" in "\n".join(c.provenance.lines())
    # other collectives never take the one-shot samples
    coll["nvlink"]["all_gather"] = {"2": {"alpha_s": 20e-6, "bytes_per_s": 300e9,
                                          "samples": eager}}
    c = CostModel(make_profile(collectives=coll), "bf16")
    assert c.collective_s("all_gather", 65536, 2, "nvlink") == approx(
        25e-6 + 65536 / 300e9)

def roofline_shape(m, n, k, bw):
    return max(2 * m * n * k / 100e12, (m * k + k * n + m * n) * 2 / bw)


def test_attention_rooflines(toy_profile):
    c = CostModel(toy_profile, "bf16")
    # decode: batch 4 over 1000 tokens, 8 q / 2 kv heads of 128: K+V read + q in/out
    assert c.decode_attention_s(4, 1000, 8, 2, 128) == approx(
        (2 * 4 * 1000 * 2 + 2 * 4 * 8) * 128 * 2 / 1e12)
    # prefill of 1000 tokens: 2 n^2 h d causal FLOPs at 100 TFLOP/s
    assert c.prefill_attention_s(1000, 8, 2, 128) == approx(2 * 1000**2 * 8 * 128 / 100e12)
    # a chunk of 500 after 500 cached: f(1000) - f(500)
    assert c.prefill_chunk_s(500, 500, 8, 2, 128) == approx(
        (2 * 1000**2 - 2 * 500**2) * 8 * 128 / 100e12)
    assert c.elementwise_s(1e6) == approx(1e-6)


def test_decode_attention_grid_samples():
    samples = [{"batch": b, "context": ctx, "q_heads": 8, "kv_heads": 2, "head_dim": 128,
                "time_s": t} for (b, ctx), t in {(1, 1024): 10e-6, (1, 4096): 40e-6,
                                                 (16, 1024): 80e-6, (16, 4096): 320e-6}.items()]
    c = CostModel(make_profile(ops={"decode_attention": {"samples": samples}}), "bf16")
    assert c.decode_attention_s(4, 2048, 8, 2, 128) == approx((10e-6 * 320e-6) ** 0.5)
    assert c.decode_attention_s(32, 4096, 8, 2, 128) == approx(2 * 320e-6)  # linear beyond


def test_collectives_alpha_beta_and_ring_derivation(toy_profile):
    c = CostModel(toy_profile, "bf16")
    assert c.collective_s("all_reduce", 1e6, 2, "nvlink") == approx(10e-6 + 1e6 / 100e9)
    # 4 ranks from the 2-rank line: bus bandwidth 100 GB/s x 2(2-1)/2, traffic 2(4-1)/4
    assert c.collective_s("all_reduce", 1e6, 4, "nvlink") == approx(10e-6 + 1.5e6 / 100e9)
    assert c.collective_s("reduce_scatter", 1e6, 2, "nvlink") == approx(10e-6 + 0.5e6 / 100e9)
    assert c.collective_s("all_gather", 1e6, 4, "nvlink") == approx(10e-6 + 3e6 / 100e9)
    assert c.collective_s("send_recv", 1e6, 2, "infiniband") == approx(5e-6 + 1e6 / 10e9)
    assert c.collective_s("all_reduce", 1e6, 1, "nvlink") == 0.0
    assert ring_traffic("broadcast", 8) == 1.0


def test_collective_samples_in_range_and_beyond():
    fit = {"alpha_s": 10e-6, "bytes_per_s": 50e9,
           "samples": [{"bytes": 1000, "time_s": 10e-6}, {"bytes": 10**6, "time_s": 40e-6}]}
    c = CostModel(make_profile(collectives={"nvlink": {"all_reduce": {"2": fit}}}), "bf16")
    mid = (1000 * 10**6) ** 0.5
    assert c.collective_s("all_reduce", mid, 2, "nvlink") == approx(20e-6)
    assert c.collective_s("all_reduce", 1e9, 2, "nvlink") == approx(40e-6 + (1e9 - 1e6) / 50e9)
    assert c.collective_s("all_reduce", 100, 2, "nvlink") == approx(10e-6)


def test_link_override_and_missing_link(toy_profile):
    c = CostModel(toy_profile, "bf16", links={"nvlink": LinkSpec(bw_gbps=50, latency_us=2)})
    assert c.collective_s("all_reduce", 1e6, 4, "nvlink") == approx(2e-6 + 1.5e6 / 50e9)
    with pytest.raises(SpecError, match="cluster.links.ethernet"):
        c.collective_s("all_reduce", 1e6, 4, "ethernet")


def test_missing_dtype_peak(toy_profile):
    with pytest.raises(SpecError, match="peaks.matmul_flops_per_s"):
        CostModel(toy_profile, "fp16")


def test_decode_step_of_one_sequence_is_its_weight_read(toy_profile):
    """Batch 1, short context: a TP=1 step streams every layer's weights and the LM head
    once (the embedding lookup reads one row); the rest is within half a percent."""
    model = model_preset("llama-3-8b")
    stage = StageCost(StageSpec(model, 1, model.layers, "nvlink", True, True),
                      CostModel(toy_profile, "bf16"))
    t, comm = stage.step(StepBatch(1, 16, (), 0, 1))
    weights = (model.layers * (model.params_per_layer - 2 * model.hidden)
               + model.vocab * model.hidden) * 2
    assert comm == 0.0
    assert weights / 1e12 <= t <= 1.005 * weights / 1e12


def test_follower_and_stage_step_overheads(toy_profile):
    """The driver pays step_s, plus follower_step_s when TP peers follow it; a pipeline
    stage before the last delays each step by stage_step_s (the plan's trip to it, its
    launch) without holding its stage."""
    from twinfer.sim.stage import PipelineModel
    over = {"step_s": 200e-6, "follower_step_s": 300e-6, "stage_step_s": 150e-6}
    c = CostModel(make_profile(overheads=over), "bf16")
    m = model_preset("llama-3-8b")

    def fixed(tp, layers, first, last):
        return StageCost(StageSpec(m, tp, layers, "nvlink", first, last), c).fixed_s

    assert fixed(1, 32, True, True) == approx(200e-6)  # alone: no followers
    assert fixed(2, 32, True, True) == approx(500e-6)  # TP peers wait for the plan
    assert fixed(1, 16, False, True) == approx(200e-6)  # PP: the driver
    assert fixed(2, 16, False, True) == approx(500e-6)  # PP, the driver with TP peers
    assert fixed(1, 16, True, False) == approx(0.0)  # the stage before it: no stage time
    stages = [StageCost(StageSpec(m, 1, 16, "nvlink", j == 0, j == 1), c) for j in (0, 1)]
    batch = StepBatch(decode_n=8, decode_ctx_sum=8 * 512, logits_n=8)
    bare = PipelineModel(stages, [], [(0,), (1,)], 2)
    led = PipelineModel(stages, [], [(0,), (1,)], 2, lead_s=150e-6)
    (_, l0, times, _), (p1, l1, *_) = bare.period(batch), led.period(batch)
    assert l1 == approx(l0 + 150e-6)  # the step's latency grows by the delay
    assert p1 == approx(max(l1, 2 * max(times)))  # the stages' occupancy does not


def test_eager_steps_take_at_least_the_hosts_launch_time():
    """Decode steps of layouts or runs without CUDA graphs cost max(kernels, layers x the
    eager host time per layer + tail); prefill steps with TP collectives max(kernels,
    layers x prefill_tp_layer_s + tail), the tail being the LM head the GPU runs after
    the last launch; one-GPU prefill (no floor given) and graph-replayed decode have no
    floor."""
    from twinfer.sim.kv_sharded import KvShardedStageCost

    m = model_preset("llama-3-8b")
    over = {"cuda_graphs": True, "eager_layer_s": 1e-3, "eager_tp_layer_s": 2e-3,
            "prefill_tp_layer_s": 3e-3}
    with_floor = CostModel(make_profile(overheads=over), "bf16")
    without = CostModel(make_profile(overheads={"cuda_graphs": True}), "bf16")
    decode = StepBatch(decode_n=1, decode_ctx_sum=512, logits_n=1)
    prompt = StepBatch(0, 0, ((64, 0),), 64, 1)
    for tp, prefill_floor in ((1, None), (2, 96e-3)):
        spec = StageSpec(m, tp, 32, "nvlink", True, True)
        floored, bare = StageCost(spec, with_floor), StageCost(spec, without)
        assert floored.kernels_s(prompt) == approx(bare.step(prompt)[0])
        if prefill_floor is None:
            assert floored.step(prompt)[0] == approx(bare.step(prompt)[0])
        else:
            assert bare.step(prompt)[0] < prefill_floor  # a short prompt: host-bound
            assert floored.step(prompt)[0] == approx(prefill_floor + floored.tail_s(prompt))
            assert 0 < floored.tail_s(prompt) < 1e-3
        assert floored.step(decode)[0] == approx(bare.step(decode)[0])  # graph replay
    # a layout the executor decodes eagerly gets the decode floor
    spec = StageSpec(m, 2, 32, "nvlink", True, True)
    sharded = KvShardedStageCost(spec, with_floor, "fused")
    assert sharded.step(decode)[0] == approx(64e-3 + sharded.tail_s(decode))
    one_gpu = CostModel(make_profile(overheads={**over, "cuda_graphs": False}), "bf16")
    alone = StageCost(StageSpec(m, 1, 32, "nvlink", True, True), one_gpu)
    assert alone.step(decode)[0] == approx(32e-3 + alone.tail_s(decode))  # eager decode
    first = StageCost(StageSpec(m, 1, 16, "nvlink", True, False), one_gpu)
    assert first.tail_s(decode) == 0  # a stage that does not sample has no tail


def test_one_gpu_prefill_floor_and_the_drivers_time_per_sequence():
    """A one-GPU prefill step takes at least ``prefill_host_s + layers x
    prefill_layer_s`` (the host enqueueing it) and its tail (the LM head launched last);
    the driver's stage adds ``seq_s`` per
    sequence of any step, a follower stage none (docs/PROFILE.md)."""
    m = model_preset("llama-3-8b")
    over = {"cuda_graphs": True, "prefill_layer_s": 1e-3, "prefill_host_s": 1e-3,
            "seq_s": 10e-6}
    cost = CostModel(make_profile(overheads=over), "bf16")
    bare = CostModel(make_profile(overheads={"cuda_graphs": True}), "bf16")
    prompt = StepBatch(0, 0, ((64, 0),), 64, 1)
    driver = StageCost(StageSpec(m, 1, 32, "nvlink", True, True), cost)
    assert StageCost(StageSpec(m, 1, 32, "nvlink", True, True), bare).step(prompt)[0] < 33e-3
    assert driver.step(prompt)[0] == approx(1e-3 + 32 * 1e-3 + driver.tail_s(prompt) + 10e-6)
    decode = StepBatch(decode_n=16, decode_ctx_sum=16 * 512, logits_n=16)
    plain = StageCost(StageSpec(m, 1, 32, "nvlink", True, True), bare).step(decode)[0]
    assert driver.step(decode)[0] == approx(plain + 16 * 10e-6)
    follower = StageCost(StageSpec(m, 1, 16, "nvlink", True, False), cost)
    lone = StageCost(StageSpec(m, 1, 16, "nvlink", True, False), bare)
    assert follower.step(decode)[0] == approx(lone.step(decode)[0])


def test_samples_of_another_kernel_build_are_named_in_the_provenance():
    from twinfer.fingerprint import kernels_fingerprint
    from twinfer.sim.cost import CostModel
    from twinfer.sim.profile import load_profile

    base = load_profile("h100-sxm")
    assert not [line for line in CostModel(base, "bf16").provenance.lines()
                if "another build" in line]  # the shipped profiles record none
    ops = base.ops.model_copy(update={
        "decode_attention": base.ops.decode_attention.model_copy(update={"kernels": "old"}),
        "gemm": base.ops.gemm.model_copy(update={"kernels": kernels_fingerprint()})})
    lines = CostModel(base.model_copy(update={"ops": ops}), "bf16").provenance.lines()
    assert (f"h100-sxm decode_attention: samples taken with another build of the kernels "
            f"than this checkout's ({kernels_fingerprint()}); `twinfer calibrate --ops "
            "decode_attention` re-measures them") in lines


def test_samples_timed_one_launch_at_a_time_are_named_in_the_provenance():
    """A GPU profile's sections timed eagerly carry the event gap per kernel: the
    provenance says which and how to re-time them; graph-timed ones are not named."""
    from twinfer.sim.profile import load_profile

    base = load_profile("h100-sxm")
    ops = base.ops.model_copy(update={
        kind: getattr(base.ops, kind).model_copy(update={"timing": "graph"})
        for kind in ("gemm", "decode_attention", "prefill_attention")})
    ops = ops.model_copy(update={"elementwise": ops.elementwise.model_copy(
        update={"timing": "eager"})})
    lines = CostModel(base.model_copy(update={"ops": ops}), "bf16").provenance.lines()
    named = [line for line in lines if "one launch at a time" in line]
    assert len(named) == 1 and "h100-sxm elementwise:" in named[0]
    assert "--ops elementwise" in named[0] and "gemm" not in named[0]
    graphed = ops.model_copy(update={"elementwise": ops.elementwise.model_copy(
        update={"timing": "graph"})})
    assert not [line for line in CostModel(base.model_copy(update={"ops": graphed}),
                                           "bf16").provenance.lines()
                if "one launch at a time" in line]
    cpu = load_profile("cpu")  # wall-clock samples: no event gap to name
    assert not [line for line in CostModel(cpu, "fp32").provenance.lines()
                if "one launch at a time" in line]
