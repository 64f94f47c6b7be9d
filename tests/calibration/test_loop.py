"""The whole loop on CPU: quick calibration -> executor under mpiexec -> overheads -> compare.

Two gloo ranks run the tiny model with TP=2. Overheads are fitted on one executor
run and the twin is judged on another (different prompt length and batch), so the
comparison is not a fit to itself. The bound is loose: this host's CPU timings move
with whatever else runs on its two cores. Observed here (docs/VALIDATION.md, CPU
loop): TPOT within about 10-40%, TTFT within a factor of two.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from twinfer.calibration.calibrate import CalibrateOptions, calibrate
from twinfer.calibration.overheads import fit_overheads_into
from twinfer.compare import METRICS, compare_file, validation_table
from twinfer.exec.launch import repo_pythonpath

REPO = Path(__file__).resolve().parents[2]
TPOT_RATIO = (1 / 3, 3.0)  # predicted / measured
TTFT_RATIO = (1 / 5, 5.0)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("mpiexec") is None and shutil.which("mpirun") is None,
                       reason="needs mpiexec"),
]


def _scenario(path: Path, requests: int, prompt: int, output: int) -> Path:
    path.write_text(
        "model: tiny\n"
        "cluster: {nodes: [{name: node0, gpu: cpu, count: 2, intra_link: shm}]}\n"
        "layout: {kind: uniform, tp: 2}\n"
        f"workload: {{requests: {requests}, prompt_tokens: {prompt}, "
        f"output_tokens: {output}, arrival: {{kind: batch}}}}\n")
    return path


def _exec(scenario: Path, out: Path) -> Path:
    env = {**os.environ, "PYTHONPATH": repo_pythonpath(), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "twinfer.exec", str(scenario), "--device",
                           "cpu", "--arrivals", "batch", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return out


def test_calibrate_execute_compare_on_cpu(tmp_path):
    profile_path = tmp_path / "cpu.json"
    calibrate(CalibrateOptions(out=profile_path, device="cpu", quick=True, progress=False))
    fit_run = _exec(_scenario(tmp_path / "fit.yaml", 2, 32, 24), tmp_path / "fit.json")
    fit, _ = fit_overheads_into([fit_run], profile_path)
    assert fit.steps >= 20 and fit.step_s >= 0
    run = _exec(_scenario(tmp_path / "run.yaml", 4, 96, 16), tmp_path / "run.json")

    c = compare_file(run, profile_path)
    for key in METRICS:
        assert math.isfinite(c.measured[key]) and c.measured[key] > 0, key
        assert math.isfinite(c.predicted[key]) and c.predicted[key] > 0, key
    tpot = c.predicted["tpot_mean_s"] / c.measured["tpot_mean_s"]
    ttft = c.predicted["ttft_mean_s"] / c.measured["ttft_mean_s"]
    tps = c.predicted["tps"] / c.measured["tps"]
    print(f"CPU loop: TPOT error {tpot - 1:+.1%}, TTFT {ttft - 1:+.1%}, TPS {tps - 1:+.1%}")
    assert TPOT_RATIO[0] < tpot < TPOT_RATIO[1]
    assert TPOT_RATIO[0] < tps < TPOT_RATIO[1]
    assert TTFT_RATIO[0] < ttft < TTFT_RATIO[1]

    table = validation_table([tmp_path], profile_path)
    assert "| TPOT mean | 2 |" in table  # both runs are results files; both tabulated
