"""The fits recover known parameters from synthetic data with noise."""

from __future__ import annotations

import json

import numpy as np
import pytest

from twinfer.calibration.fit import (
    curve_quality,
    fit_alpha_beta,
    fit_linear_nonneg,
    loglog_interp,
)

SIZES = np.array([4096 * 2**i for i in range(17)], dtype=float)  # 4 KiB .. 256 MiB


@pytest.mark.parametrize("alpha_s,bw", [(20e-6, 300e9), (5e-6, 25e9), (200e-6, 1e9)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_alpha_beta_recovers_parameters_under_noise(alpha_s, bw, seed):
    rng = np.random.default_rng(seed)
    x = np.repeat(SIZES, 3)
    t = (alpha_s + x / bw) * rng.lognormal(0.0, 0.03, size=x.size)
    fit = fit_alpha_beta(x, t)
    assert fit.bytes_per_s == pytest.approx(bw, rel=0.05)
    assert fit.alpha_s == pytest.approx(alpha_s, rel=0.10)
    assert 0.01 < fit.residual_rel < 0.08


def test_alpha_beta_shrugs_off_outliers():
    rng = np.random.default_rng(7)
    alpha_s, bw = 15e-6, 150e9
    t = (alpha_s + SIZES / bw) * rng.lognormal(0.0, 0.02, size=SIZES.size)
    t[-2] *= 3.0  # one big message hit a slow moment
    t[1] *= 4.0
    fit = fit_alpha_beta(SIZES, t)
    assert fit.bytes_per_s == pytest.approx(bw, rel=0.05)
    assert fit.alpha_s == pytest.approx(alpha_s, rel=0.15)


def test_alpha_beta_prediction_and_bad_input():
    fit = fit_alpha_beta(SIZES, 10e-6 + SIZES / 100e9)
    assert fit.predict_s(1e9) == pytest.approx(10e-6 + 1e9 / 100e9, rel=1e-3)
    assert fit.residual_rel < 1e-3
    with pytest.raises(ValueError, match="three or more"):
        fit_alpha_beta([1, 2], [1, 2])
    with pytest.raises(ValueError, match="positive"):
        fit_alpha_beta([1, 2, 3], [1, 0, 2])


def test_loglog_interp_is_exact_on_power_laws():
    x = np.array([1.0, 10.0, 100.0, 1000.0])
    y = 3.0 * x**1.5
    assert loglog_interp(x, y, np.array([31.6]))[0] == pytest.approx(3.0 * 31.6**1.5, rel=1e-9)


def test_curve_quality_of_a_smooth_and_a_broken_curve():
    m = np.geomspace(1, 16384, 15)
    smooth = 5e-6 + m * 1e-8  # latency floor then linear: log-log smooth
    q = curve_quality(m, smooth)
    assert q.points == 15 and q.loo_rel_max < 0.3 and q.non_monotone_rel == 0.0
    broken = smooth.copy()
    broken[7] *= 0.5
    q2 = curve_quality(m, broken)
    assert 0.4 < q2.non_monotone_rel < 0.5
    assert q2.loo_rel_max > 0.5


def test_nonneg_least_squares_recovers_overheads():
    rng = np.random.default_rng(3)
    layers = rng.choice([2, 4, 32, 80], size=200)
    design = np.column_stack([np.ones(200), layers])
    target = 40e-6 + 8e-6 * layers + rng.normal(0, 1e-6, 200)
    coef, rms = fit_linear_nonneg(design, target)
    assert coef == pytest.approx([40e-6, 8e-6], rel=0.05)
    assert rms < 2e-6


def test_decode_overheads_recover_a_negative_per_layer_term_under_graphs():
    from twinfer.calibration.overheads import _fit_decode
    from twinfer.calibration.replay import StepReplay

    # measured = kernels + 300 us - 24 us per layer (graph replay undercuts the sweeps)
    rows = [StepReplay("decode", 4, 4, k + 300e-6 - 24e-6 * layers, k, k, layers, 1)
            for layers in (8, 32) for k in (2e-3, 2.1e-3, 7e-3)]
    step_s, per_layer_s, seq_s = _fit_decode(rows, split=True, graphs=True)
    assert step_s == pytest.approx(300e-6) and per_layer_s == pytest.approx(-24e-6)
    assert seq_s == 0.0  # one batch size: no per-sequence term
    # without graphs the terms stay non-negative
    step_s, per_layer_s, _ = _fit_decode(rows, split=True, graphs=False)
    assert step_s >= 0 and per_layer_s >= 0


def test_decode_overheads_fit_a_per_sequence_term_across_batch_sizes():
    from twinfer.calibration.overheads import _fit_decode
    from twinfer.calibration.replay import StepReplay

    # measured = kernels + 250 us - 20 us per layer + 8 us per sequence
    rows = [StepReplay("decode", batch, batch, k + 250e-6 - 20e-6 * layers + 8e-6 * batch,
                       k, k, layers, 1)
            for layers, batch in ((8, 4), (32, 4), (8, 32)) for k in (2e-3, 5e-3)]
    step_s, per_layer_s, seq_s = _fit_decode(rows, split=True, graphs=True)
    assert (step_s, per_layer_s, seq_s) == pytest.approx((250e-6, -20e-6, 8e-6))
    # steps that got faster with more sequences give no negative host time per sequence
    rows = [StepReplay("decode", b, b, k + 250e-6 - 1e-6 * b, k, k, 8 * (1 + (b > 4)), 1)
            for b in (4, 32) for k in (2e-3, 5e-3)]
    assert _fit_decode(rows, split=True, graphs=True)[2] == 0.0


def test_prefill_host_floor_from_the_recorded_host_time():
    """One-GPU prefill steps that recorded their host time fit the floor
    ``prefill_host_s + prefill_layer_s * layers`` (docs/PROFILE.md)."""
    from twinfer.calibration.overheads import _fit_prefill_host
    from twinfer.calibration.replay import StepReplay

    def rows(layers: int, run: int, hosts: list[float]) -> list[StepReplay]:
        return [StepReplay("prefill", 1, 256, 0.0, 0.0, 1e-3, layers, 1, host_s=h, run=run)
                for h in hosts]

    line = [8e-4 + 3.6e-4 * layers for layers in (8, 32)]
    # each run counts once by its median: run 2's many steps and its slow outlier
    # do not pull the line
    steps = rows(8, 0, [line[0]]) + rows(32, 1, [line[1]]) + rows(
        8, 2, [line[0]] * 20 + [0.05])
    fixed, layer, n = _fit_prefill_host(steps)
    assert (fixed, layer, n) == pytest.approx((8e-4, 3.6e-4, 23))
    assert _fit_prefill_host([]) is None  # older results record no host time


def test_runs_with_followers_fit_their_own_step_term(monkeypatch):
    """One-GPU runs fit step_s / per_layer_s; TP=2 runs' decode steps then give what a
    step with followers costs more (docs/PROFILE.md, overheads.follower_step_s)."""
    from twinfer.calibration.replay import StepReplay

    alone = [StepReplay("decode", 4, 4, k + 200e-6 - 20e-6 * layers, k, k, layers, 1, 1)
             for layers in (8, 32) for k in (2e-3, 3e-3)]
    crowd = [StepReplay("decode", 4, 4, k + 200e-6 - 20e-6 * 32 + 350e-6, k, k, 32, 1, 2)
             for k in (1.5e-3, 2.5e-3)]
    import twinfer.calibration.overheads as ov
    from twinfer.sim.profile import load_profile

    docs = [{"rows": alone, "summary": {"cuda_graphs": True}, "ranks": []},
            {"rows": crowd, "summary": {"cuda_graphs": True}, "ranks": []}]
    monkeypatch.setattr(ov, "replay", lambda doc, profile: doc["rows"])
    fit = ov.fit_overheads(docs, load_profile("h200-sxm"))
    assert fit.step_s == pytest.approx(200e-6) and fit.per_layer_s == pytest.approx(-20e-6)
    assert fit.follower_step_s == pytest.approx(350e-6) and fit.follower_steps == 2
    assert "follower_step_s 350.0 us (2 decode steps with followers)" in fit.note(["x"])
    profile = ov.apply_overheads({"notes": []}, fit, ["x"])
    assert profile["overheads"]["follower_step_s"] == pytest.approx(350e-6)
    # runs with followers alone: everything goes to step_s, as before
    alone_fit = ov.fit_overheads(docs[1:], load_profile("h200-sxm"))
    assert alone_fit.follower_steps == 0 and alone_fit.steps == 2


def test_eager_runs_fit_the_host_floor_of_eager_steps(monkeypatch):
    """Runs without CUDA graphs fit the host time per layer of eager steps (one GPU, and
    with TP collectives); graph runs still fit the step terms, and prefill's step term
    is fitted over the floor (docs/PROFILE.md, overheads.eager_layer_s)."""
    from twinfer.calibration.replay import StepReplay

    step_s, per_layer_s, follower_s = 200e-6, -20e-6, 350e-6
    graph = [StepReplay("decode", 4, 4, k + step_s + per_layer_s * layers, k, k, layers, 1, 1)
             for layers in (8, 32) for k in (2e-3, 3e-3)]
    graph += [StepReplay("decode", 4, 4, k + step_s + per_layer_s * 32 + follower_s, k, k,
                         32, 1, 2) for k in (1.5e-3, 2.5e-3)]
    # a 512-token prefill on one GPU: kernels 12 ms over a 32 x 0.3 ms floor, + 4 ms
    # (per_layer_s corrects decode layers only)
    graph += [StepReplay("prefill", 1, 512, 12e-3 + 4e-3, 0, 12e-3, 32, 1, 1)]
    # eager decode: host-bound at 0.3 ms per layer (one GPU), 0.8 ms with TP
    eager = [StepReplay("decode", 4, 4, 32 * 0.3e-3 + step_s + per_layer_s * 32, 0, k,
                        32, 1, 1) for k in (4e-3, 5e-3)]
    eager += [StepReplay("decode", 4, 4, 32 * 0.8e-3 + step_s + per_layer_s * 32 + follower_s,
                         0, k, 32, 1, 2) for k in (2e-3, 30e-3)]
    import twinfer.calibration.overheads as ov
    from twinfer.sim.profile import load_profile

    docs = [{"rows": graph, "summary": {"cuda_graphs": True}, "ranks": []},
            {"rows": eager, "summary": {"cuda_graphs": False}, "ranks": []}]
    monkeypatch.setattr(ov, "replay", lambda doc, profile: doc["rows"])
    fit = ov.fit_overheads(docs, load_profile("h200-sxm"))
    assert fit.step_s == pytest.approx(step_s) and fit.follower_step_s == pytest.approx(
        follower_s)
    assert fit.eager.layer_s == pytest.approx(0.3e-3)
    assert fit.eager.tp_layer_s == pytest.approx(0.8e-3)
    assert (fit.eager.steps, fit.eager.host_bound) == (2, 2)
    assert (fit.eager.tp_steps, fit.eager.tp_host_bound) == (2, 1)  # 30 ms of kernels
    assert fit.prefill_step_s == pytest.approx(4e-3)
    assert fit.eager.prefill_tp_steps == 0  # no prefill steps with TP in these runs
    # a TP=2 prefill step bound by its host: 32 x 1.2 ms beyond the prefill terms
    tp_prefill = StepReplay("prefill", 1, 512, 32 * 1.2e-3 + 4e-3 + follower_s, 0, 11e-3,
                            32, 1, 2)
    docs[1]["rows"] = eager + [tp_prefill]
    fit2 = ov.fit_overheads(docs, load_profile("h200-sxm"))
    assert fit2.eager.prefill_tp_layer_s == pytest.approx(1.2e-3)
    assert (fit2.eager.prefill_tp_steps, fit2.eager.prefill_tp_host_bound) == (1, 1)
    assert ov.apply_overheads({"notes": []}, fit2, ["x"])["overheads"][
        "prefill_tp_layer_s"] == pytest.approx(1.2e-3)
    overheads = ov.apply_overheads({"notes": []}, fit, ["x"])["overheads"]
    assert overheads["eager_layer_s"] == pytest.approx(0.3e-3)
    assert overheads["eager_tp_layer_s"] == pytest.approx(0.8e-3)
    assert "eager_tp_layer_s 800.0 us" in fit.note(["x"])
    # without graph runs beside them, eager runs fit the step terms as before
    assert ov.fit_overheads(docs[1:], load_profile("h200-sxm")).eager is None


def test_the_tail_after_the_last_launch_is_not_fitted_into_the_step_terms(monkeypatch):
    """A host-paced step ends its tail (the LM head, launched last) after the host's
    last launch: the fits take it out, so that ``prefill_step_s`` is what a kernel-bound
    prefill pays too and ``eager_layer_s`` is the host's alone."""
    import twinfer.calibration.overheads as ov
    from twinfer.calibration.replay import StepReplay
    from twinfer.sim.profile import load_profile

    tail, step_s, prefill_s = 0.3e-3, 200e-6, 0.4e-3
    graph = [StepReplay("decode", 4, 4, k + step_s, k, k, layers, 1, 1)
             for layers in (8, 32) for k in (2e-3, 3e-3)]
    # one-GPU prefills: host-paced (floor 0.8 ms + 0.35 ms per layer, kernels under it)
    # and one kernel-bound 512-token prompt
    floor = {layers: 0.8e-3 + 0.35e-3 * layers for layers in (8, 32)}
    host_paced = [[StepReplay("prefill", 1, 256, floor[layers] + tail + prefill_s, 0,
                              0.6 * floor[layers], layers, 1, 1, host_s=floor[layers],
                              tail_s=tail)] for layers in (8, 32)]
    graph += [StepReplay("prefill", 1, 512, 14e-3 + prefill_s, 0, 14e-3, 32, 1, 1,
                         host_s=floor[32], tail_s=tail)]
    eager = [StepReplay("decode", 4, 4, 32 * 0.3e-3 + tail + step_s, 0, 4e-3, 32, 1, 1,
                        tail_s=tail) for _ in range(2)]
    docs = [{"rows": rows, "summary": {"cuda_graphs": True}, "ranks": []}
            for rows in [graph, *host_paced]]
    docs += [{"rows": eager, "summary": {"cuda_graphs": False}, "ranks": []}]
    monkeypatch.setattr(ov, "replay", lambda doc, profile: doc["rows"])
    fit = ov.fit_overheads(docs, load_profile("h200-sxm"))
    assert fit.prefill_host[:2] == pytest.approx((0.8e-3, 0.35e-3))
    assert fit.prefill_step_s == pytest.approx(prefill_s)
    assert fit.eager.layer_s == pytest.approx(0.3e-3)


def test_pipelined_runs_fit_the_stage_step_term():
    """Runs with pipeline stages give stage_step_s: the delay per stage before the last
    with which the twin reproduces their mean TPOT (the shipped CPU overhead runs: two
    PP=2 runs on two gloo ranks, docs/calibration/overheads/cpu/)."""
    from pathlib import Path

    import twinfer.calibration.overheads as ov
    from twinfer.compare import compare
    from twinfer.sim.profile import load_profile

    paths = sorted((Path(__file__).parents[2] / "docs/calibration/overheads/cpu").glob("*.json"))
    docs = [ov.load_results(p) for p in paths]
    piped = [d for d in docs if d["scenario"]["layout"].get("pp", 1) > 1]
    assert len(piped) == 2
    profile = load_profile("cpu")
    fit = ov.fit_overheads(docs, profile)
    assert fit.stage_steps == 2 and fit.stage_step_s > 0
    fitted = profile.model_validate(ov.apply_overheads(
        json.loads(profile.model_dump_json()), fit, ["x"]))
    predicted = [compare(d, fitted).predicted["tpot_mean_s"] for d in piped]
    measured = [d["summary"]["tpot_s"]["mean"] for d in piped]
    assert sum(predicted) == pytest.approx(sum(measured), rel=1e-3)
