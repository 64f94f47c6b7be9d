"""Monotone interpolation of measured times in log-log space.

Kernel times grow with problem size, but measurements carry noise: a GEMM with m=32
may time a hair faster than one with m=16, and now and then one point is many times
too slow (a clock change, another process on the host). The cost model must never
predict that more work is faster (the engine's invariants and layout search rely on
it), and one glitch must not inflate a whole curve. So each curve is cleaned first:

0. a point more than ``DOMINANCE`` times slower than a later point (more work) is a
   **glitch** whatever its neighbours look like (runs of them, or one at a row's end,
   escape the spike test); it is refilled on the log-log line through its nearest good
   neighbours (`glitches`, `refill`). A grid (decode attention over batch and
   context) applies the rule along both axes;
1. a **spike** (a point more than ``SPIKE`` times slower than the log-log line
   through its two neighbours, or the smallest point more than that slower than the
   next) is replaced by that line's value (the geometric mean of its neighbours where
   they are evenly spaced in log x), and counted. Measured against the line, not the
   larger neighbour, a glitch that lands next to a fast-growing neighbour is caught
   too (H100 prefill attention at 4096 tokens: 1.21 ms between 0.13 ms at 2048 and
   1.41 ms at 8192, where the H200 measured 0.41 ms). Kernel curves are convex in
   log-log (flat where latency-bound, then a growing power), so a true point lies on
   or below the line through its neighbours and is never taken for a spike;
2. the curve is made non-decreasing by **isotonic regression** in log time (pool
   adjacent violators: the least-squares monotone fit, which averages a dip with its
   neighbours instead of letting the largest value dominate),

then interpolated linearly in log x and log t. Outside the measured range nothing
is invented silently: ``LogLogSeries.at`` says whether a query was inside, below
(the caller gets the smallest point's time) or above (the caller scales from the
largest point and says how).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable

INSIDE, BELOW, ABOVE = "inside", "below", "above"
SPIKE = 2.0  # a point this many times slower than its neighbours is a glitch


def despike(ts: list[float], xs: list[float] | None = None) -> tuple[list[float], int]:
    """Times with isolated spikes replaced by the log-log line through their neighbours
    (``xs``: the abscissae; default evenly spaced in log, the geometric mean)."""
    out, spikes = list(ts), 0
    n = len(ts)
    lx = [math.log(x) for x in xs] if xs is not None else list(range(n))
    for i in range(n - 1):  # not the largest point: it may rightly grow fast (quadratic)
        if i == 0:
            if n > 1 and ts[0] > SPIKE * ts[1]:
                out[0] = ts[1]
                spikes += 1
            continue
        w = (lx[i] - lx[i - 1]) / (lx[i + 1] - lx[i - 1])
        line = math.exp((1 - w) * math.log(ts[i - 1]) + w * math.log(ts[i + 1]))
        if ts[i] > SPIKE * line:
            out[i] = line
            spikes += 1
    return out, spikes


def isotonic_log(ts: list[float]) -> list[float]:
    """The non-decreasing sequence closest to ``ts`` in log space (least squares, PAV)."""
    blocks: list[list[float]] = []  # [sum of logs, count, first index]
    for i, t in enumerate(ts):
        blocks.append([math.log(t), 1, i])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count, _ = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    out = []
    for total, count, first in blocks:  # a point left alone keeps its measured value
        out += [ts[first]] if count == 1 else [math.exp(total / count)] * int(count)
    # exp(log) rounding must not undo the order
    for i in range(1, len(out)):
        out[i] = max(out[i], out[i - 1])
    return out


def monotone_curve(ts: list[float], xs: list[float] | None = None) -> tuple[list[float], int]:
    """Points slower than a later one refilled (`glitches`), despiked, then isotonic:
    (non-decreasing times, points replaced)."""
    flags, bounds = glitches(ts)
    clean, spikes = despike(refill(ts, flags, xs, bounds), xs)
    return isotonic_log(clean), spikes + sum(flags)


def _monotone(points: Iterable[tuple[float, float]]) -> tuple[list[float], list[float], int]:
    """Sorted distinct x (the median time where x repeats), cleaned and monotone."""
    by_x: dict[float, list[float]] = {}
    for x, t in points:
        by_x.setdefault(x, []).append(t)
    xs = sorted(by_x)
    ts = [sorted(by_x[x])[len(by_x[x]) // 2] for x in xs]
    mono, spikes = monotone_curve(ts, xs)
    return xs, mono, spikes


class LogLogSeries:
    """A non-decreasing t(x) through measured points, linear in (log x, log t)."""

    def __init__(self, points: Iterable[tuple[float, float]]) -> None:
        xs, ts, spikes = _monotone(points)
        if not xs:
            raise ValueError("a series needs at least one point")
        self.xs = xs
        self.ts = ts
        self.spikes = spikes  # measured points replaced as glitches
        self._lx = [math.log(x) for x in xs]
        self._lt = [math.log(t) for t in ts]

    def __len__(self) -> int:
        return len(self.xs)

    @property
    def lo(self) -> float:
        return self.xs[0]

    @property
    def hi(self) -> float:
        return self.xs[-1]

    def at(self, x: float) -> tuple[float, str]:
        """(time, where): where is INSIDE, BELOW (time of the smallest point) or ABOVE
        (time of the largest point; the caller scales it)."""
        xs = self.xs
        if x <= xs[0]:
            return self.ts[0], (INSIDE if x == xs[0] else BELOW)
        if x >= xs[-1]:
            return self.ts[-1], (INSIDE if x == xs[-1] else ABOVE)
        i = bisect_left(xs, x)
        lx = math.log(x)
        x0, x1 = self._lx[i - 1], self._lx[i]
        t0, t1 = self._lt[i - 1], self._lt[i]
        t = math.exp(t0 + (t1 - t0) * (lx - x0) / (x1 - x0))
        # clamp away exp/log rounding so the curve stays monotone to the last bit
        return min(max(t, self.ts[i - 1]), self.ts[i]), INSIDE


DOMINANCE = 1.25  # a point this many times slower than a point of more work is a glitch
MAX_SLOPE = 1.0  # along a grid row, time grows at most linearly (decode over context)


def glitches(ts: list[float]) -> tuple[list[bool], list[float]]:
    """For times of ever more work (a curve along its axis; a grid column along batch):
    which are glitches, and each point's bound, the fastest later point (inf for the
    last). A point more than ``DOMINANCE`` times slower than its bound did less work in
    more time. Isolated-spike despiking cannot see such points when they sit at a row's
    end or come in runs (H100 decode, 16 query / 4 KV heads, batch 1: 242.5 us at 16K
    and 168.4 us at 32K tokens, where batch 4 took 58.5 and 103.3; H100 GEMM 2048 ->
    4096 at m = 8, 16, 32: 228, 152, 103 us, where m = 4 and m = 64 took 11.4 and
    11.6)."""
    bounds, fastest = [math.inf] * len(ts), math.inf
    for i in range(len(ts) - 1, -1, -1):  # suffix minima
        bounds[i], fastest = fastest, min(fastest, ts[i])
    return [t > DOMINANCE * u for t, u in zip(ts, bounds, strict=True)], bounds


def grid_glitches(grid: list[list[float]]) -> tuple[list[list[bool]], list[list[float]]]:
    """`glitches` down every column of a grid whose rows are ever more work (decode
    attention: batch sizes), as rows."""
    columns = [glitches(list(col)) for col in zip(*grid, strict=True)]
    flags = [list(row) for row in zip(*(f for f, _ in columns), strict=True)]
    bounds = [list(row) for row in zip(*(u for _, u in columns), strict=True)]
    return flags, bounds


def refill(ts: list[float], glitch: list[bool], xs: list[float] | None,
           bound: list[float] | None = None) -> list[float]:
    """``ts`` with the flagged points replaced from the row's others: the log-log line
    through the nearest good neighbours; past the last good point, its line from the
    point before, slope within [0, ``MAX_SLOPE``]; before the first, its value; never
    above ``bound`` (`glitches`)."""
    good = [i for i, g in enumerate(glitch) if not g]
    if not good or len(good) == len(ts):
        return list(ts)
    # xs None: evenly spaced in log x, as `despike` takes it
    lx = [math.log(x) for x in xs] if xs is not None else [float(i) for i in range(len(ts))]
    out = list(ts)
    for i in (i for i, g in enumerate(glitch) if g):
        left = [k for k in good if k < i]
        right = [k for k in good if k > i]
        if left and right:
            lo, hi = left[-1], right[0]
        elif len(left) >= 2:
            lo, hi = left[-2], left[-1]
        elif left:
            out[i] = ts[left[-1]] * math.exp(MAX_SLOPE * (lx[i] - lx[left[-1]]))
            continue
        else:
            out[i] = ts[right[0]]
            continue
        slope = (math.log(ts[hi]) - math.log(ts[lo])) / (lx[hi] - lx[lo])
        if not right:
            slope = min(max(slope, 0.0), MAX_SLOPE)
        out[i] = math.exp(math.log(ts[hi]) + slope * (lx[i] - lx[hi]))
    if bound is not None:
        out = [min(t, b) if g else t for t, b, g in zip(out, bound, glitch, strict=True)]
    return out


class LogLogGrid:
    """t(a, b) on a full rectilinear grid, bilinear in log space, non-decreasing in both.

    Used for decode attention over (batch, context). Points slower than a point of more
    work (a larger batch, same context) are glitches, refilled along their row
    (`grid_glitches`, `refill`) before each row is despiked and made monotone. Queries
    outside the grid are clamped to its edge and reported as BELOW or ABOVE per axis, so
    the caller can scale (time grows linearly with batch and with context once
    memory-bound).
    """

    def __init__(self, points: dict[tuple[float, float], float]) -> None:
        a_vals = sorted({a for a, _ in points})
        b_vals = sorted({b for _, b in points})
        if len(points) != len(a_vals) * len(b_vals):
            raise ValueError("the points do not form a full grid")
        raw = [[points[(a, b)] for b in b_vals] for a in a_vals]
        flags, bounds = grid_glitches(raw)
        grid, self.spikes = [], sum(map(sum, flags))
        for row_t, row_g, row_u in zip(raw, flags, bounds, strict=True):
            # each row refilled, cleaned and monotone along b ...
            row, spikes = monotone_curve(refill(row_t, row_g, b_vals, row_u), b_vals)
            grid.append(row)
            self.spikes += spikes
        for i in range(1, len(grid)):  # ... then a running maximum along a keeps both
            for j in range(len(b_vals)):
                grid[i][j] = max(grid[i][j], grid[i - 1][j])
        self.a_vals, self.b_vals = a_vals, b_vals
        self._la = [math.log(a) for a in a_vals]
        self._lb = [math.log(b) for b in b_vals]
        self._t = grid
        self._lt = [[math.log(t) for t in row] for row in grid]

    @staticmethod
    def is_grid(keys: Iterable[tuple[float, float]]) -> bool:
        keys = set(keys)
        return len(keys) == len({a for a, _ in keys}) * len({b for _, b in keys})

    @staticmethod
    def _locate(vals: list[float], logs: list[float], v: float) -> tuple[int, float, str]:
        """Cell index and weight of the upper neighbour, with where the value fell."""
        if v <= vals[0]:
            return 0, 0.0, (INSIDE if v == vals[0] else BELOW)
        if v >= vals[-1]:
            last = len(vals) - 1
            return max(last - 1, 0), (1.0 if last else 0.0), (INSIDE if v == vals[-1] else ABOVE)
        i = bisect_left(vals, v)
        return i - 1, (math.log(v) - logs[i - 1]) / (logs[i] - logs[i - 1]), INSIDE

    def at(self, a: float, b: float) -> tuple[float, str, str]:
        """(time at the clamped point, where along a, where along b)."""
        i, wa, where_a = self._locate(self.a_vals, self._la, a)
        j, wb, where_b = self._locate(self.b_vals, self._lb, b)
        lt = self._lt
        i1 = min(i + 1, len(lt) - 1)
        j1 = min(j + 1, len(lt[0]) - 1)
        low = lt[i][j] + (lt[i][j1] - lt[i][j]) * wb
        high = lt[i1][j] + (lt[i1][j1] - lt[i1][j]) * wb
        t = min(max(math.exp(low + (high - low) * wa), self._t[i][j]), self._t[i1][j1])
        return t, where_a, where_b
