"""Calibration end to end on CPU: profile round trip, bad profiles, resumption, CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from twinfer.calibration.calibrate import CalibrateOptions, calibrate
from twinfer.calibration.profile_build import read_profile_dict
from twinfer.calibration.store import PartialStore, partial_path
from twinfer.cli import main
from twinfer.exec.launch import repo_pythonpath
from twinfer.sim.profile import load_profile, profile_from_dict
from twinfer.spec import SpecError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def quick_profile(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("cal") / "cpu.json"
    profile, path = calibrate(CalibrateOptions(
        out=out, device="cpu", quick=True, ops=("gemm", "decode_attention", "elementwise"),
        name="cpu-test", progress=False))
    return profile, path


def test_quick_profile_is_valid_and_round_trips(quick_profile):
    profile, path = quick_profile
    assert path.exists() and not partial_path(path).exists()
    loaded = load_profile(path)
    assert loaded.name == "cpu-test" and loaded.source == "cpu-measured"
    assert loaded.ops.gemm.dtype == "fp32" and loaded.ops.gemm.samples
    assert loaded.ops.decode_attention.samples and loaded.ops.elementwise.samples
    assert loaded.peaks.copy_bytes_per_s > 0 and loaded.peaks.matmul_flops_per_s["fp32"] > 0
    again = profile_from_dict(json.loads(json.dumps(loaded.model_dump(mode="json"))))
    assert again == loaded
    assert json.loads(path.read_text()) == json.loads(json.dumps(profile))
    assert any(n.startswith("fit gemm:") for n in loaded.notes)


def test_decode_samples_form_full_grids(quick_profile):
    profile, _ = quick_profile
    grids: dict = {}
    for s in profile["ops"]["decode_attention"]["samples"]:
        grids.setdefault((s["q_heads"], s["kv_heads"]), set()).add((s["batch"], s["context"]))
    for points in grids.values():
        batches = {b for b, _ in points}
        contexts = {c for _, c in points}
        assert len(points) == len(batches) * len(contexts)


@pytest.mark.parametrize("text,match", [
    ('{"schema_version": 1, "name": "x"', "not valid JSON"),
    ('{"hello": "world"}', "not a twinfer profile"),
    ('{"schema_version": 7, "name": "x"}', "schema_version"),
    ('[1, 2, 3]', "not a twinfer profile"),
])
def test_corrupt_or_foreign_profile_is_a_clear_error(tmp_path, text, match):
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    with pytest.raises(SpecError, match=match):
        read_profile_dict(bad)
    with pytest.raises(SpecError, match=match):
        load_profile(bad)


def test_profile_with_a_wrong_field_names_it(quick_profile, tmp_path):
    profile, _ = quick_profile
    broken = json.loads(json.dumps(profile))
    broken["ops"]["gemm"]["samples"][0]["time_s"] = -1.0
    bad = tmp_path / "neg.json"
    bad.write_text(json.dumps(broken))
    with pytest.raises(SpecError, match=r"ops\.gemm\.samples\.0\.time_s"):
        read_profile_dict(bad)


def test_interrupted_run_resumes_keeping_finished_groups(tmp_path, monkeypatch):
    from twinfer.calibration import calibrate as cal

    out = tmp_path / "p.json"
    opts = CalibrateOptions(out=out, device="cpu", quick=True, ops=("gemm",), progress=False)
    real_groups = cal.compute_groups
    calls = []

    def dying_groups(plan, ops):
        for key, fn in real_groups(plan, ops):
            if len(calls) == 2:
                def die(bench):
                    raise KeyboardInterrupt
                yield key, die
                return
            calls.append(key)
            yield key, fn

    monkeypatch.setattr(cal, "compute_groups", dying_groups)
    with pytest.raises(KeyboardInterrupt):
        calibrate(opts)
    partial = json.loads(partial_path(out).read_text())
    assert list(partial["groups"]) == calls  # the two finished groups, nothing else
    kept = {k: v["samples"] for k, v in partial["groups"].items()}
    monkeypatch.setattr(cal, "compute_groups", real_groups)
    profile, _ = calibrate(opts)
    samples = profile["ops"]["gemm"]["samples"]
    for key, group in kept.items():
        if key.startswith("gemm/"):
            assert all(s in samples for s in group)  # the very same measurements
    assert not partial_path(out).exists()


def test_a_killed_process_leaves_a_resumable_partial_file(tmp_path):
    out = tmp_path / "k.json"
    cmd = [sys.executable, "-m", "twinfer.cli", "calibrate", "--device", "cpu", "--quick",
           "--ops", "gemm,decode_attention", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": repo_pythonpath()}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    part = partial_path(out)
    deadline = time.monotonic() + 60
    groups: dict = {}
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            groups = json.loads(part.read_text())["groups"]
        except (OSError, ValueError, KeyError):
            groups = {}
        if len(groups) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if not groups:
        pytest.skip("the run finished before it could be killed")
    saved = json.loads(part.read_text())["groups"]  # whole and parseable after a kill
    assert len(saved) >= 2
    fingerprint = json.loads(part.read_text())["fingerprint"]
    store = PartialStore(part, fingerprint)
    assert store.resumed == len(saved)
    profile, _ = calibrate(CalibrateOptions(out=out, device="cpu", quick=True,
                                            ops=("gemm", "decode_attention"), progress=False))
    gemm = profile["ops"]["gemm"]["samples"]
    for key, group in saved.items():
        if key.startswith("gemm/"):
            assert all(s in gemm for s in group["samples"])


@pytest.mark.skipif(shutil.which("mpiexec") is None and shutil.which("mpirun") is None,
                    reason="needs mpiexec")
def test_collectives_under_mpirun_with_gloo(tmp_path):
    profile, _ = calibrate(CalibrateOptions(out=tmp_path / "c.json", device="cpu", quick=True,
                                            ops=("collectives",), progress=False))
    fits = profile["collectives"]["shm"]
    assert set(fits) == {"all_reduce", "all_gather", "reduce_scatter", "broadcast",
                         "send_recv"}
    for op in fits.values():
        fit = op["2"]
        assert fit["bytes_per_s"] > 0 and fit["alpha_s"] >= 0 and len(fit["samples"]) >= 3


def test_cli_rejects_an_unknown_op_with_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["calibrate", "--device", "cpu", "--ops", "gemm,matmul", "--out",
              str(tmp_path / "x.json")])
    assert exc.value.code == 2
    assert "unknown op 'matmul'" in capsys.readouterr().err


def test_the_calibration_package_imports_nothing_heavy():
    code = ("import sys, twinfer.calibration, twinfer.calibration.fit, "
            "twinfer.calibration.store, twinfer.calibration.plan; "
            "heavy = {'torch', 'triton', 'mpi4py', 'matplotlib', 'streamlit'} & set(sys.modules); "
            "assert not heavy, heavy")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": repo_pythonpath()})
    assert proc.returncode == 0, proc.stderr
