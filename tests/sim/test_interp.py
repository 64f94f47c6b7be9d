"""Monotone log-log interpolation."""

from __future__ import annotations

import math

import pytest

from twinfer.sim.interp import ABOVE, BELOW, INSIDE, LogLogGrid, LogLogSeries


def test_series_is_linear_in_log_log_and_exact_at_points():
    s = LogLogSeries([(1, 10e-6), (100, 1000e-6)])
    assert s.at(1) == (10e-6, INSIDE)
    assert s.at(100) == (pytest.approx(1000e-6), INSIDE)
    t, where = s.at(10)  # halfway in log x: the geometric mean of the times
    assert where == INSIDE and t == pytest.approx(100e-6)
    assert s.at(0.5) == (10e-6, BELOW)
    assert s.at(1000)[1] == ABOVE


def test_noisy_samples_become_monotone_by_isotonic_fit():
    # a dip is averaged with its neighbour (geometric mean), not overruled by it;
    # repeated x keep their median time
    s = LogLogSeries([(1, 5.0), (2, 4.0), (4, 6.0), (4, 7.0), (4, 9.0)])
    assert s.ts == [pytest.approx(math.sqrt(20)), pytest.approx(math.sqrt(20)), 7.0]
    values = [s.at(x)[0] for x in (1, 1.5, 2, 3, 4)]
    assert values == sorted(values)


def test_a_spike_does_not_inflate_the_curve():
    # a real H100 GEMM curve with one glitch at m=8 (159 us among ~14 us)
    pts = [(1, 14.0), (2, 14.6), (4, 13.9), (8, 159.1), (16, 14.3), (32, 15.0), (64, 15.3)]
    s = LogLogSeries(pts)
    assert s.spikes == 1
    assert max(s.ts) == 15.3
    assert s.at(8)[0] == pytest.approx(14.3, rel=0.03)
    # the largest point may grow fast (prefill attention is quadratic): never a spike
    assert LogLogSeries([(1, 1.0), (2, 4.0)]).ts == [1.0, 4.0]


def test_grid_is_bilinear_in_log_space_and_monotone():
    pts = {(1, 100): 1.0, (1, 10000): 100.0, (100, 100): 10.0, (100, 10000): 1000.0}
    g = LogLogGrid(pts)
    t, wa, wb = g.at(10, 1000)
    assert (wa, wb) == (INSIDE, INSIDE)
    assert t == pytest.approx(math.sqrt(1.0 * 1000.0))
    assert g.at(1000, 50) == (pytest.approx(10.0), ABOVE, BELOW)
    assert not LogLogGrid.is_grid([(1, 1), (2, 2)])


def test_a_spike_next_to_a_fast_growing_neighbour_is_caught():
    # the shipped H100 prefill-attention curve (ms): the 4096 sample sits 9x above
    # 2048 and just below 8192; the line through its neighbours says ~0.43 ms (the
    # H200 measured 0.41 ms there)
    pts = [(1024, 0.050), (2048, 0.132), (4096, 1.207), (8192, 1.41), (16384, 5.167)]
    s = LogLogSeries(pts)
    assert s.spikes == 1
    assert s.at(4096)[0] == pytest.approx(math.sqrt(0.132 * 1.41))
    # unevenly spaced neighbours: the replacement is the log-log line, not their mean
    s = LogLogSeries([(1, 1.0), (2, 50.0), (8, 64.0), (16, 100.0)])
    assert s.at(2)[0] == pytest.approx(4.0)  # 64 ** (1/3); their geometric mean is 8
    # a convex (power-law) curve is left alone
    quad = [(x, 1e-3 * x * x + 1.0) for x in (1, 2, 4, 8, 16, 32)]
    assert LogLogSeries(quad).spikes == 0


def test_a_grid_point_slower_than_more_work_is_a_glitch():
    # the shipped H100 decode-attention grid, 16 query / 4 KV heads (us): batch 1 took
    # 205 us at 256 tokens and 242.5 / 168.4 us at 16K / 32K, more than batch 4 at the
    # same contexts; the row's own despiking misses the pair at its end
    contexts = [256, 512, 1024, 2048, 4096, 8192, 16384, 32768]
    rows = {1: [205.0, 16.8, 19.7, 21.2, 21.5, 26.2, 242.5, 168.4],
            4: [11.3, 16.6, 20.1, 22.7, 26.5, 38.3, 58.5, 103.3],
            16: [12.5, 18.8, 25.9, 35.7, 57.4, 101.9, 191.4, 366.6]}
    g = LogLogGrid({(b, c): t * 1e-6 for b, row in rows.items()
                    for c, t in zip(contexts, row, strict=True)})
    assert g.spikes == 3
    at = {c: g.at(1, c)[0] * 1e6 for c in contexts}
    assert at[256] == pytest.approx(11.3)  # refilled, bounded by batch 4's time
    slope = math.log(26.2 / 21.5) / math.log(2)  # the row's last good segment
    assert at[16384] == pytest.approx(26.2 * 2 ** slope)
    assert at[32768] == pytest.approx(26.2 * 4 ** slope)  # ~39 us, not 168
    assert g.at(4, 32768)[0] * 1e6 == pytest.approx(103.3)  # batch 4 keeps its own
    # good points are untouched, and the grid stays monotone in both directions
    assert at[4096] == pytest.approx(21.5)
    for b in rows:
        ts = [g.at(b, c)[0] for c in contexts]
        assert ts == sorted(ts)
    for c in contexts:
        assert g.at(1, c)[0] <= g.at(4, c)[0] <= g.at(16, c)[0]


def test_refill_past_the_last_good_point_grows_at_most_linearly():
    from twinfer.sim.interp import refill

    xs = [1.0, 2.0, 4.0, 8.0]
    # the last good segment grows 3x per doubling: the fill is capped at linear growth
    assert refill([1.0, 3.0, 50.0, 60.0], [False, False, True, True], xs) == \
        pytest.approx([1.0, 3.0, 6.0, 12.0])
    # one good point: linear from it; none left of a glitch: the first good value
    assert refill([2.0, 9.0, 9.0], [False, True, True], xs[:3]) == pytest.approx([2.0, 4.0, 8.0])
    assert refill([9.0, 2.0, 3.0], [True, False, False], xs[:3]) == pytest.approx([2.0, 2.0, 3.0])
    assert refill([9.0, 2.0], [True, False], xs[:2], [1.5, 5.0]) == pytest.approx([1.5, 2.0])


def test_a_run_of_glitches_slower_than_more_work_is_refilled():
    # the shipped H100 GEMM 2048 -> 4096 (us by m): m = 8, 16, 32 took 228, 152, 103 us
    # between 11.4 at m = 4 and 11.6 at m = 64; despiking sees no isolated spike there
    # and an isotonic fit alone would pool them into every larger m
    ms = [1, 2, 4, 8, 16, 32, 64, 128]
    ts = [11.3, 11.3, 11.4, 228.4, 152.4, 103.4, 11.6, 12.2]
    s = LogLogSeries(list(zip(ms, [t * 1e-6 for t in ts], strict=True)))
    assert s.spikes == 3
    for m, want in ((8, 11.4 * (11.6 / 11.4) ** 0.25), (32, 11.4 * (11.6 / 11.4) ** 0.75),
                    (64, 11.6), (128, 12.2)):
        assert s.at(m)[0] * 1e6 == pytest.approx(want)
