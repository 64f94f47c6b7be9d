"""Timing an op as the executor runs it: back to back inside a CUDA graph
(``twinfer.calibration.timing.measure_graphed``: every compute sweep on a GPU), or
eagerly between events (the CPU; a GPU op of 1 ms or more)."""

from __future__ import annotations

import pytest
import torch

from twinfer.calibration.timing import TimingConfig, measure, measure_graphed


def test_graphed_timing_off_cuda_is_the_plain_measurement():
    calls = []

    def run(i: int) -> None:
        calls.append(i)
        sum(range(2000))

    cfg = TimingConfig(warmup=1, min_reps=3, max_reps=3)
    t = measure_graphed(run, torch.device("cpu"), cfg, launches=8)
    assert t > 0
    assert calls[0] == 0 and len(calls) == 1 + 3 + 3  # warm-up, probes, repetitions


@pytest.mark.gpu
def test_graphed_decode_attention_is_timed_per_launch_and_not_slower_than_eager():
    """A graph of 32 back-to-back decode launches over rotation copies, divided by 32:
    within the eager timing (which adds each launch's gap) and not far under it."""
    from twinfer.kernels.decode import paged_flash_decode

    dev = torch.device("cuda")
    batch, context, page, kv_heads, q_heads = 1, 4096, 16, 8, 32
    pages = context // page

    def inputs() -> tuple:
        k = torch.randn(batch * pages, page, kv_heads, 128, device=dev, dtype=torch.bfloat16)
        table = torch.randperm(batch * pages, device=dev).view(batch, pages).int()
        q = torch.randn(batch, q_heads, 128, device=dev, dtype=torch.bfloat16)
        return q, k, torch.randn_like(k), table, torch.full((batch,), context, device=dev,
                                                             dtype=torch.int32)

    sets = [inputs() for _ in range(8)]

    def run(i: int) -> object:
        return paged_flash_decode(*sets[i % len(sets)])

    cfg = TimingConfig()
    with torch.inference_mode():
        eager = measure(run, dev, cfg)
        graphed = measure_graphed(run, dev, cfg)
        out, lse = run(0)  # the attention output and its log-sum-exp
    assert torch.isfinite(out.float()).all() and torch.isfinite(lse.float()).all()
    assert 0.3 * eager < graphed <= 1.05 * eager


@pytest.mark.gpu
def test_an_op_of_a_millisecond_or_more_is_timed_between_events(monkeypatch):
    """No graph is captured for a long op (32 captured launches would only hold memory
    for a gap under 0.3% of it); a short one is captured."""
    dev = torch.device("cuda")
    captured = []
    real = torch.cuda.CUDAGraph

    class Recording(real):
        def capture_begin(self, *args, **kwargs):
            captured.append(1)
            return super().capture_begin(*args, **kwargs)

    monkeypatch.setattr(torch.cuda, "CUDAGraph", Recording)
    a = torch.randn(16384, 8192, device=dev, dtype=torch.bfloat16)  # 2.2 TFLOP: > 2 ms
    b = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    cfg = TimingConfig(warmup=1, min_reps=3, max_reps=5)
    with torch.inference_mode():
        long_s = measure_graphed(lambda i: a @ b.T, dev, cfg)
        assert long_s > 1e-3 and not captured
        short_s = measure_graphed(lambda i: a[:16] @ b.T, dev, cfg)
    assert captured and 0 < short_s < long_s


@pytest.mark.gpu
def test_the_compute_sweeps_capture_the_executors_kernels_in_graphs():
    """GEMM (the skinny kernel and cuBLAS), prefill attention and every element-wise op
    of the sweeps capture and replay in a CUDA graph; a small RMSNorm, graphed, is not
    slower than between events."""
    import dataclasses

    from twinfer.calibration.plan import ELEMENTWISE, gpu_plan
    from twinfer.calibration.shapes import GemmShape, HeadShape
    from twinfer.calibration.sweep_compute import (
        Bench,
        elementwise_group,
        gemm_group,
        prefill_group,
    )

    plan = dataclasses.replace(gpu_plan(quick=True), gemm_m=[1, 16, 512, 4096],
                               prefill_tokens=[128, 1024], elementwise_bytes=[1 << 16, 1 << 24])
    bench = Bench(plan, TimingConfig(warmup=1, min_reps=3, max_reps=5))
    samples = gemm_group(bench, GemmShape(n=6144, k=4096))
    samples += prefill_group(bench, HeadShape(q_heads=32, kv_heads=8, head_dim=128))
    for op in ELEMENTWISE:
        samples += elementwise_group(bench, op)
    assert len(samples) == 4 + 2 + 2 * len(ELEMENTWISE)
    assert all(0 < s["time_s"] < 0.1 for s in samples)
    small = [s["time_s"] for s in samples if s.get("op") == "rmsnorm"]
    assert small[0] < small[1]  # 64 KB before 16 MB

    from twinfer.kernels.norm_rope import rmsnorm

    x = [torch.randn(256, 4096, device="cuda", dtype=torch.bfloat16) for _ in range(4)]
    w = torch.ones(4096, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        eager = measure(lambda i: rmsnorm(x[i % 4], w), torch.device("cuda"), TimingConfig())
        graphed = measure_graphed(lambda i: rmsnorm(x[i % 4], w), torch.device("cuda"),
                                  TimingConfig())
    assert graphed <= 1.05 * eager
