"""Fitting the measurements: alpha-beta lines for collectives, quality of compute curves.

A collective of ``x`` bytes takes ``t = alpha + x / bandwidth`` (Hockney's model).
The two terms are fitted where each dominates: ``bandwidth`` by robust least squares
(soft-L1 loss on relative residuals, solved by iteratively reweighted least squares,
so one slow outlier does not tilt the line) on the large-message tail, ``alpha`` as
the median of ``t - x / bandwidth`` over the small messages. ``residual_rel`` is the
root mean square of the relative error of the fitted line over every sample. Plain
numpy: the GPU image the campaign runs on need not have scipy.

Compute curves (GEMM over m, attention over context, element-wise over bytes) stay as
samples: the cost model interpolates them in log-log space. What is fitted is how
well that interpolation holds: leave-one-out relative error of log-log interpolation
at interior points, and how far the curve departs from monotone.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

TAIL_SHARE = 0.4  # the largest 40% of message sizes fit the bandwidth
HEAD_SHARE = 0.3  # the smallest 30% fit the latency
MIN_TAIL = 3
MIN_HEAD = 2
SOFT_L1_SCALE = 0.05  # relative residuals beyond ~5% count linearly, not squared
IRLS_ITERS = 50


@dataclass(frozen=True)
class AlphaBeta:
    alpha_s: float
    bytes_per_s: float
    residual_rel: float

    def predict_s(self, nbytes: np.ndarray | float) -> np.ndarray | float:
        return self.alpha_s + np.asarray(nbytes, dtype=float) / self.bytes_per_s


def _split(nbytes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sizes = np.unique(nbytes)
    n_tail = max(MIN_TAIL, int(np.ceil(TAIL_SHARE * len(sizes))))
    n_head = max(MIN_HEAD, int(np.ceil(HEAD_SHARE * len(sizes))))
    tail = np.isin(nbytes, sizes[-n_tail:])
    head = np.isin(nbytes, sizes[:n_head])
    return tail, head


def fit_alpha_beta(nbytes: Sequence[float], times_s: Sequence[float]) -> AlphaBeta:
    """Fit ``t = alpha + bytes / bandwidth`` to (bytes, time) samples of one collective.

    Needs at least three distinct sizes. ``alpha`` is clamped at zero and the bandwidth
    kept positive (a tail whose time does not grow with size gets a huge bandwidth).
    """
    x = np.asarray(nbytes, dtype=float)
    t = np.asarray(times_s, dtype=float)
    if x.shape != t.shape or len(np.unique(x)) < 3:
        raise ValueError("an alpha-beta fit needs samples at three or more message sizes")
    if np.any(t <= 0) or np.any(x <= 0):
        raise ValueError("message sizes and times must be positive")
    tail, head = _split(x)
    _, sec_per_byte = robust_line(x[tail], t[tail])
    alpha_s = max(0.0, float(np.median(t[head] - x[head] * sec_per_byte)))
    pred = alpha_s + x * sec_per_byte
    residual = float(np.sqrt(np.mean((pred / t - 1.0) ** 2)))
    return AlphaBeta(alpha_s, 1.0 / sec_per_byte, residual)


def robust_line(x: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    """(intercept, slope > 0) of ``t ~ a + b x`` minimizing the soft-L1 loss of the
    relative residuals ``(a + b x) / t - 1`` by iteratively reweighted least squares."""
    design = np.column_stack([np.ones_like(x), x]) / t[:, None]  # rows scaled by 1/t
    target = np.ones_like(t)
    weights = np.ones_like(t)
    coef = np.zeros(2)
    for _ in range(IRLS_ITERS):
        sw = np.sqrt(weights)[:, None]
        new, *_ = np.linalg.lstsq(design * sw, target * sw[:, 0], rcond=None)
        if new[1] <= 0:  # a flat or falling tail: keep the slope positive but tiny
            new = np.array([float(np.median(t)), float(np.median(t)) * 1e-12 / max(x.max(), 1)])
        resid = design @ new - target
        weights = 1.0 / np.sqrt(1.0 + (resid / SOFT_L1_SCALE) ** 2)
        if np.allclose(new, coef, rtol=1e-10, atol=0):
            break
        coef = new
    return float(coef[0]), float(coef[1])


def loglog_interp(x_known: np.ndarray, y_known: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Piecewise-linear interpolation in log-log space (x_known ascending, positive)."""
    return np.exp(np.interp(np.log(x), np.log(x_known), np.log(y_known)))


@dataclass(frozen=True)
class CurveQuality:
    """How well log-log interpolation represents a measured curve."""

    points: int
    loo_rel_median: float  # leave-one-out relative error at interior points
    loo_rel_max: float
    non_monotone_rel: float  # largest relative drop of time as the size grows

    def as_dict(self) -> dict[str, float | int]:
        return {"points": self.points, "loo_rel_median": round(self.loo_rel_median, 5),
                "loo_rel_max": round(self.loo_rel_max, 5),
                "non_monotone_rel": round(self.non_monotone_rel, 5)}


def curve_quality(sizes: Sequence[float], times_s: Sequence[float]) -> CurveQuality:
    """Leave-one-out log-log interpolation error and monotonicity of time vs size.

    Repeated sizes are reduced to their median time first.
    """
    x_all = np.asarray(sizes, dtype=float)
    t_all = np.asarray(times_s, dtype=float)
    x = np.unique(x_all)
    t = np.array([np.median(t_all[x_all == v]) for v in x])
    errors = []
    for i in range(1, len(x) - 1):
        keep = np.arange(len(x)) != i
        pred = loglog_interp(x[keep], t[keep], x[i : i + 1])[0]
        errors.append(abs(pred / t[i] - 1.0))
    drops = np.maximum(0.0, 1.0 - t[1:] / t[:-1]) if len(t) > 1 else np.zeros(1)
    return CurveQuality(
        points=int(len(x)),
        loo_rel_median=float(np.median(errors)) if errors else 0.0,
        loo_rel_max=float(np.max(errors)) if errors else 0.0,
        non_monotone_rel=float(drops.max()) if drops.size else 0.0,
    )


def fit_linear_nonneg(design: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, float]:
    """Non-negative least squares ``design @ coef ~ target`` for a few columns (every
    subset of columns is tried; exact for the one or two the overhead fit has).
    Returns (coef, rms residual)."""
    design = np.asarray(design, dtype=float)
    target = np.asarray(target, dtype=float)
    cols = design.shape[1]
    best, best_err = np.zeros(cols), float(np.sum(target**2))
    for size in range(1, cols + 1):
        for subset in itertools.combinations(range(cols), size):
            sol, *_ = np.linalg.lstsq(design[:, subset], target, rcond=None)
            if np.any(sol < 0):
                continue
            coef = np.zeros(cols)
            coef[list(subset)] = sol
            err = float(np.sum((design @ coef - target) ** 2))
            if err < best_err:
                best, best_err = coef, err
    resid = design @ best - target
    return best, float(np.sqrt(np.mean(resid**2))) if len(target) else 0.0
