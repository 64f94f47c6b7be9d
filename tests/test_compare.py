"""twinfer compare: errors, a run equal to the twin's own prediction, the CLI, the table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from twinfer.calibration.replay import replay
from twinfer.cli import main
from twinfer.compare import METRICS, Comparison, compare, compare_file, validation_table
from twinfer.sim import simulate
from twinfer.sim.profile import load_profile
from twinfer.spec import SpecError, scenario_from_dict

SCENARIO = {
    "name": "tiny_h200_tp2",
    "model": {"preset": "tiny", "dtype": "bf16"},  # the measured profile sweeps bf16
    "cluster": {"nodes": [{"name": "node0", "gpu": "h200-sxm", "count": 2,
                           "intra_link": "nvlink"}]},
    "layout": {"kind": "uniform", "tp": 2},
    "workload": {"requests": 4, "prompt_tokens": 64, "output_tokens": 8,
                 "arrival": {"kind": "batch"}},
}


def _results_as_predicted() -> dict:
    """A results document whose every measurement is the twin's own prediction."""
    scenario = scenario_from_dict(SCENARIO)
    sim = simulate(scenario)
    n, prompt, out = 4, 64, 8
    steps = [{"step": 0, "pipeline": 0, "micro_batch": 0, "phase": "prefill", "batch": n,
              "tokens": n * prompt, "context_tokens": n * prompt}]
    for i in range(1, out):
        steps.append({"step": i, "pipeline": 0, "micro_batch": 0, "phase": "decode",
                      "batch": n, "tokens": n, "context_tokens": n * (prompt + i)})
    for s in steps:
        s.update(start_s=0.0, wall_s=1.0, ranks={})
    doc = {"schema": "twinfer.exec.results/1", "scenario": scenario.to_dict(),
           "layout": SCENARIO["layout"], "options": {"arrivals": "batch"},
           "device": {"type": "cuda", "name": "fake", "count": 2}, "ranks": [],
           "summary": {"ttft_s": _stat(sim.ttft_s), "tpot_s": _stat(sim.tpot_s),
                       "tps": sim.tps, "cuda_graphs": True},
           "steps": steps}
    start = 0.0
    for s, r in zip(steps, replay(doc), strict=True):  # periods = the twin's step times
        s["start_s"], s["wall_s"] = start, r.predicted_s
        start += r.predicted_s
    return doc


def _cli(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def _stat(stat) -> dict:
    return {"mean": stat.mean, "p50": stat.p50, "p99": stat.p99}


def test_relative_errors():
    c = Comparison("", "s", "m", "TP=1", "d", 1, 1, 1, "p",
                   {k: 2.0 for k in METRICS}, {k: 2.5 for k in METRICS})
    assert all(e == pytest.approx(0.25) for e in c.errors().values())
    c.measured["tps"] = math.nan
    assert math.isnan(c.errors()["tps"])
    assert c.to_dict()["error_rel"]["tps"] is None


def test_a_run_equal_to_the_prediction_has_no_error():
    c = compare(_results_as_predicted())
    assert c.layout == "TP=2" and c.profile.startswith("h200-sxm")
    for key, err in c.errors().items():
        assert err == pytest.approx(0.0, abs=1e-9), key


def test_cli_compare_json_plot_and_table(tmp_path, capsys):
    res = tmp_path / "runs" / "r1.json"
    res.parent.mkdir()
    res.write_text(json.dumps(_results_as_predicted()))
    assert _cli(["compare", str(res), "--json", str(tmp_path / "c.json"), "--plot",
                 str(tmp_path / "c.png")]) == 0
    assert "tpot_mean_s" in capsys.readouterr().out
    data = json.loads((tmp_path / "c.json").read_text())
    assert set(data["error_rel"]) == set(METRICS)
    assert (tmp_path / "c.png").stat().st_size > 1000
    assert _cli(["compare", "--table", str(tmp_path / "runs")]) == 0
    table = capsys.readouterr().out
    assert "| TPOT mean | 1 | 0.0% | 0.0% |" in table
    assert "| 0.0% / 0.0% | 0.0% / 0.0% | all four |" in table  # the targets, per device
    assert table == validation_table([tmp_path / "runs"]) + "\n"


def test_compare_refuses_what_is_not_a_results_file(tmp_path, capsys):
    bad = tmp_path / "profile.json"
    bad.write_text(json.dumps({"schema_version": 1}))
    with pytest.raises(SpecError, match="not an executor results JSON"):
        compare_file(bad)
    assert _cli(["compare", str(bad)]) == 2
    assert "not an executor results JSON" in capsys.readouterr().err


def test_explicit_profile_is_used(tmp_path):
    res = tmp_path / "r.json"
    res.write_text(json.dumps(_results_as_predicted()))
    h100 = load_profile("h100-sxm")
    c = compare_file(res, "h100-sxm")
    assert c.profile.startswith(h100.name)
    assert Path(c.source) == res


def test_the_twin_gets_the_runs_kv_pages():
    from twinfer.compare import measured_kv_blocks

    ranks = [{"rank": 0, "pipeline": 0, "num_blocks": 900},
             {"rank": 1, "pipeline": 0, "num_blocks": 850}, {"rank": 2, "idle": True}]
    assert measured_kv_blocks({"ranks": ranks}) == [850]
    assert measured_kv_blocks({"ranks": []}) is None


def test_steps_grouped_by_composition_carry_the_replay(capsys):
    """``--steps``: a run whose steps took exactly the twin's times has no error per
    composition, and the groups account for every step."""
    from twinfer.compare import step_groups

    doc = _results_as_predicted()
    groups = step_groups(doc)
    assert sum(g.steps for g in groups) == len(doc["steps"])
    assert {g.phase for g in groups} <= {"prefill", "decode"}
    reps = replay(doc)
    for g in groups:
        mine = [r for r in reps if (r.phase, r.batch, r.tokens) == (g.phase, g.batch, g.tokens)]
        assert g.predicted_s == pytest.approx(sum(r.predicted_s for r in mine) / len(mine))
        assert g.error == pytest.approx(0.0, abs=1e-9)  # periods are the twin's times
        assert math.isnan(g.device_s)  # these steps record no rank spans
        assert math.isnan(g.gc_s)  # nor garbage collections
    for i, step in enumerate(doc["steps"]):  # results that record the driver's GC time
        step["host"] = {**step.get("host", {}), "gc_s": 0.001 * (i % 2)}
    groups = step_groups(doc)
    assert sum(g.gc_s for g in groups) == pytest.approx(0.001 * (len(doc["steps"]) // 2))


def test_cli_compare_steps_table(tmp_path, capsys):
    res = tmp_path / "r.json"
    res.write_text(json.dumps(_results_as_predicted()))
    assert _cli(["compare", str(res), "--steps"]) == 0
    out = capsys.readouterr().out
    assert "steps by composition" in out and "GPU span" in out and "GC (all)" in out


def test_targets_table_says_which_targets_each_device_meets():
    from twinfer.compare import targets_table

    def run(device: str, ttft_err: float, tpot_err: float) -> Comparison:
        measured = dict.fromkeys(METRICS, 1.0)
        predicted = {**measured, "ttft_mean_s": 1.0 + ttft_err, "tpot_mean_s": 1.0 + tpot_err}
        return Comparison("r.json", "s", "m", "TP=1", device, 1, 512, 32, "p", measured,
                          predicted)

    rows = [run("A x1", 0.01, 0.02), run("A x1", -0.04, 0.05),
            run("B x2", 0.30, -0.02)]
    lines = targets_table(rows)
    assert lines[2] == ("| A x1 | 2 | 2.5% / 4.0% | 3.5% / 5.0% | TTFT median, TTFT worst, "
                        "TPOT worst |")
    assert lines[3] == "| B x2 | 1 | 30.0% / 30.0% | 2.0% / 2.0% | TPOT median, TPOT worst |"
    assert lines[4].startswith("| all | 3 | 4.0% / 30.0% | 2.0% / 5.0% |")
    assert targets_table(rows[:1])[2].endswith("| all four |")  # one device: no "all" row
    assert len(targets_table(rows[:1])) == 3


def test_measured_steps_that_compiled_kernels_are_noted():
    """Steps whose host compiled Triton kernels (``host.jit_compiles``) are named, with
    the kernels and the time; runs that record none, or none compiled, get no note."""
    doc = _results_as_predicted()
    assert compare(doc).notes == ()
    for step in doc["steps"]:
        step["host"] = {"jit_s": 0.0, "jit_compiles": 0}
    assert compare(doc).notes == ()
    doc["steps"][0]["host"] = {"jit_s": 0.128, "jit_compiles": 2,
                               "jit_kernels": ["_rope_kernel", "_prefill_kernel"]}
    (note,) = compare(doc).notes
    assert note.startswith("1 measured step(s) compiled Triton kernels (128.0 ms")
    assert "prefill step 0" in note and "_prefill_kernel, _rope_kernel" in note
