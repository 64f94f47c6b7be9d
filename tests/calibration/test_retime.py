"""The decode sweep times again a sample that took longer than a larger batch at the
same context (less work in more time: a glitch), and keeps the faster timing."""

from __future__ import annotations

from twinfer.calibration.sweep_compute import retime_glitches


def _samples(times: dict[tuple[int, int], float]) -> list[dict]:
    return [{"batch": b, "context": c, "q_heads": 16, "kv_heads": 4, "head_dim": 128,
             "time_s": t} for (b, c), t in times.items()]


def test_a_sample_slower_than_a_larger_batch_is_timed_again():
    batches, contexts = [1, 4], [512, 32768]
    times = {(1, 512): 17e-6, (1, 32768): 168e-6, (4, 512): 17e-6, (4, 32768): 103e-6}
    asked = []

    def timed(batch: int, context: int) -> float:
        asked.append((batch, context))
        return 39e-6

    out = {(s["batch"], s["context"]): s for s in
           retime_glitches(_samples(times), batches, contexts, timed)}
    assert asked == [(1, 32768)]  # only the glitch
    assert out[(1, 32768)]["time_s"] == 39e-6
    assert out[(1, 32768)]["first_time_s"] == 168e-6
    assert "first_time_s" not in out[(4, 32768)]


def test_a_slower_second_timing_keeps_the_first():
    times = {(1, 512): 50e-6, (4, 512): 20e-6}
    out = retime_glitches(_samples(times), [1, 4], [512], lambda b, c: 80e-6)
    assert out[0]["time_s"] == 50e-6 and out[0]["first_time_s"] == 50e-6


def test_a_partial_grid_is_left_alone():
    times = {(1, 512): 50e-6, (4, 512): 20e-6}
    samples = _samples(times)
    assert retime_glitches(samples, [1, 4], [512, 1024], lambda b, c: 1.0) == samples
