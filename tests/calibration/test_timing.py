"""Timing an op as the executor runs it: eagerly between events, or inside a CUDA graph
(decode attention; ``twinfer.calibration.timing.measure_graphed``)."""

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
