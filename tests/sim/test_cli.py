"""`twinfer simulate`, `twinfer profiles`: tables, --json, --trace."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from twinfer import cli
from twinfer.cli import app
from twinfer.sim import load_profile, save_profile, simulate

runner = CliRunner()


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """Tables as on a wide terminal, so that words are not wrapped apart."""
    monkeypatch.setattr(cli.console, "width", 200)


def test_simulate_default_scenario_prints_the_metrics(tmp_path):
    out, trace = tmp_path / "r.json", tmp_path / "t.json"
    result = runner.invoke(app, ["simulate", "--json", str(out), "--trace", str(trace)])
    assert result.exit_code == 0, result.output
    for word in ("TTFT", "TPOT", "tokens/s", "KV peak", "profiles: h200-sxm"):
        assert word in result.stdout
    data = json.loads(out.read_text())
    assert data["scenario"] == "llama3_8b_h200_tp2" and data["schema_version"] == 1
    assert data == json.loads(json.dumps(simulate("llama3_8b_h200_tp2").to_dict()
                                         | {"wall_s": data["wall_s"]}))
    events = json.loads(trace.read_text())["traceEvents"]
    steps = [e for e in events if e["ph"] == "X"]
    assert steps and {e["pid"] for e in steps} == {0, 1}
    assert all(e["dur"] > 0 and e["ts"] >= 0 for e in steps)
    assert {e["args"]["name"].split()[0] for e in events if e["ph"] == "M"} == {"GPU"}


def test_simulate_fast_and_verbose():
    result = runner.invoke(app, ["simulate", "llama3_8b_h200_tp2", "--fast", "-v"])
    assert result.exit_code == 0, result.output
    assert "(fast)" in result.stdout and "prediction rests on" in result.stdout


def test_profile_override_by_path(tmp_path):
    mine = load_profile("h200-sxm").model_copy(update={"name": "my-h200"})
    path = save_profile(mine, tmp_path / "my-h200.json")
    result = runner.invoke(app, ["simulate", "--profile", str(path)])
    assert result.exit_code == 0, result.output
    assert "h200-sxm: my-h200 (" in result.stdout.replace("\n", " ")


def test_profiles_lists_sources():
    result = runner.invoke(app, ["profiles"])
    assert result.exit_code == 0
    for word in ("h100-sxm", "h200-sxm", "a100-sxm-80g", "l40s", "datasheet"):
        assert word in result.stdout
