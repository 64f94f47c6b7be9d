"""Bad input on the command line: exit code 2 and one line naming the field, no traceback."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from twinfer.cli import app

runner = CliRunner()

GOOD = {"model": "llama-3-8b",
        "cluster": {"nodes": [{"name": "n0", "gpu": "h100-sxm", "count": 2}]},
        "layout": {"kind": "uniform", "tp": 2},
        "workload": {"requests": 2, "prompt_tokens": 64, "output_tokens": 4}}

CASES = [
    ("malformed yaml", "model: tiny\ncluster: {nodes: [\n", "malformed YAML"),
    ("unknown key", {**GOOD, "colour": "red"}, "colour: unknown key"),
    ("tp does not divide heads", {**GOOD, "layout": {"kind": "uniform", "tp": 3}}, "layout.tp"),
    ("GPU the cluster lacks", {**GOOD, "layout": {"kind": "uniform", "tp": 2, "gpus": [0, 7]}},
     "layout.gpus"),
    ("does not fit in memory", {**GOOD, "model": "llama-3-70b",
                                "layout": {"kind": "uniform", "tp": 1}}, "needs"),
    ("unknown GPU type", {**GOOD, "cluster": {"nodes": [{"gpu": "tpu-v9", "count": 2}]}},
     "cluster.nodes.0.gpu"),
    ("request longer than the model's positions",
     {**GOOD, "workload": {"requests": 1, "prompt_tokens": 9000, "output_tokens": 4}},
     "workload"),
]


@pytest.mark.parametrize(("why", "doc", "expect"), CASES, ids=[c[0] for c in CASES])
def test_simulate_rejects_with_one_line(tmp_path, why, doc, expect):
    path = tmp_path / "s.yaml"
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    result = runner.invoke(app, ["simulate", str(path)])
    assert result.exit_code == 2, (why, result.output)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert expect in lines[0]
    assert "Traceback" not in result.output


def test_missing_scenario_and_bad_profile(tmp_path):
    result = runner.invoke(app, ["simulate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "scenario" in result.stderr
    bad = tmp_path / "p.json"
    bad.write_text("{not json")
    result = runner.invoke(app, ["simulate", "--profile", str(bad)])
    assert result.exit_code == 2
    assert "p.json" in result.stderr and "not valid JSON" in result.stderr
