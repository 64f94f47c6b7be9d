"""``twinfer calibrate --from-exec``: overheads refit from committed executor runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from twinfer.cli import app
from twinfer.sim.profile import load_profile

runner = CliRunner()
RUNS = Path(__file__).parents[2] / "docs" / "calibration" / "overheads" / "cpu"


def test_a_folder_of_runs_refits_the_shipped_cpu_overheads(tmp_path):
    """A folder stands for its results JSONs; the shipped ``cpu`` profile was fitted from
    exactly these runs, so the refit reproduces its overheads."""
    out = tmp_path / "cpu.json"
    result = runner.invoke(app, ["calibrate", "--from-exec", str(RUNS), "--profile", "cpu",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in " ".join(result.output.split())
    refit = load_profile(out).overheads.model_dump()
    shipped = load_profile("cpu").overheads.model_dump()
    assert refit.keys() == shipped.keys()
    for key, value in shipped.items():
        expect = pytest.approx(value, rel=1e-9, abs=1e-12) if isinstance(value, float) else value
        assert refit[key] == expect, key
    files = runner.invoke(app, ["calibrate", *sum((["--from-exec", str(p)] for p in
                                                   sorted(RUNS.glob("*.json"))), []),
                                "--profile", "cpu", "--out", str(tmp_path / "b.json")])
    assert files.exit_code == 0, files.output
    assert json.loads(out.read_text())["overheads"] == json.loads(
        (tmp_path / "b.json").read_text())["overheads"]


def test_an_empty_folder_is_a_one_line_error(tmp_path):
    result = runner.invoke(app, ["calibrate", "--from-exec", str(tmp_path), "--profile", "cpu",
                                 "--out", str(tmp_path / "x.json")])
    assert result.exit_code == 2
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "without results JSONs" in lines[0], result.stderr
    assert not (tmp_path / "x.json").exists()
