"""Faults and bad launches end the whole MPI job quickly, loudly and without orphans."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from twinfer.exec.launch import ExecArgs, mpiexec_command
from twinfer.exec.launch import run as exec_verb
from twinfer.spec import SpecError

pytestmark = pytest.mark.mpi


def tiny(layout: dict, gpus: int) -> dict:
    return {"model": "tiny", "layout": layout,
            "cluster": {"nodes": [{"name": "n0", "gpu": "cpu", "count": gpus}]},
            "workload": {"requests": 2, "prompt_tokens": 6, "output_tokens": 6}}


def alive_with(marker: str) -> list[int]:
    """Processes whose command line mentions ``marker`` (our scenario's path)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker in cmdline.read_bytes().decode(errors="replace"):
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids


@pytest.mark.slow
def test_a_failing_rank_aborts_the_job_naming_rank_and_error(exec_run, mpiexec):
    _, env = mpiexec
    run = exec_run(tiny({"kind": "uniform", "pp": 2}, 2))
    # rank 0 (first stage, a follower) dies at its second step while rank 1, the
    # driver, waits in a gloo receive for its activations
    env = {**env, "TWINFER_FAIL_RANK": "0", "TWINFER_FAIL_STEP": "1"}
    cmd = [sys.executable, "-m", "twinfer.exec", str(run.scenario_path), "--device", "cpu",
           "--out", str(run.out), "--arrivals", "batch"]
    proc = subprocess.Popen(cmd, cwd=run.dir, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        failed_at, lines = None, []
        for line in proc.stderr:  # blocks until the job writes or ends
            lines.append(line)
            if "failed" in line:
                failed_at = time.monotonic()
                break
        assert failed_at is not None, "".join(lines)
        # Open MPI may interleave a stray NUL byte with the ranks' stderr
        assert lines[-1].lstrip("\x00").startswith(
            "rank 0 failed: InjectedFailure: injected failure at step 1"), "".join(lines)
        code = proc.wait(timeout=30)  # the whole job is down within 30 s of the failure
        assert time.monotonic() - failed_at < 30
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code != 0
    assert not run.out.exists()
    time.sleep(1)
    assert alive_with(str(run.scenario_path)) == []  # no orphan rank


def test_wrong_rank_count_under_user_mpiexec_is_rejected_before_any_work(exec_run, mpiexec):
    binary, env = mpiexec
    run = exec_run(tiny({"kind": "uniform", "tp": 2}, 2))
    cmd = mpiexec_command(binary, 3, [str(run.scenario_path), "--device", "cpu", "--out",
                                      str(run.out)], env)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 2
    assert "rank 0 failed: SpecError: layout: needs 2 ranks" in proc.stderr
    assert "but 3 were launched" in proc.stderr
    assert "rank 1 failed" not in proc.stderr  # rank 0 checks alone; the rest never start
    assert not run.out.exists()


def test_launcher_rejects_np_that_does_not_fit_without_starting_mpi(exec_run):
    run = exec_run(tiny({"kind": "uniform", "tp": 2}, 2))
    with pytest.raises(SpecError, match=r"needs 2 ranks .* --np 3"):
        exec_verb(ExecArgs(scenario=str(run.scenario_path), np=3, device="cpu"))


def test_cli_exec_reports_bad_input_in_one_line(exec_run):
    from twinfer.cli import app

    run = exec_run(tiny({"kind": "uniform", "tp": 2}, 2))
    result = CliRunner().invoke(app, ["exec", str(run.scenario_path), "--np", "5"])
    assert result.exit_code == 2
    assert "needs 2 ranks" in result.output
    result = CliRunner().invoke(app, ["exec", str(run.scenario_path), "--device", "tpu"])
    assert result.exit_code == 2 and "--device: unknown value 'tpu'" in result.output


def test_a_teardown_that_never_returns_does_not_hang_the_job(exec_run):
    """Seen on two H200s: NCCL's teardown hung after a TP=2 run had written its
    results. A rank waits TWINFER_TEARDOWN_S for it, says so, and exits cleanly."""
    run = exec_run(tiny({"kind": "uniform", "tp": 2}, 2))
    start = time.monotonic()
    proc = run.run(env={"TWINFER_HANG_TEARDOWN": "1", "TWINFER_TEARDOWN_S": "1"}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert time.monotonic() - start < 90
    assert "teardown did not return in 1 s" in proc.stderr
    assert run.results()["summary"]["requests"] > 0
