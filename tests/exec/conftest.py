"""Shared fixtures of the executor tests.

Multi-rank tests run the real thing: ``python -m twinfer.exec`` starts ``mpiexec`` over
gloo ranks on the CPU. They skip cleanly where no mpiexec (or mpi4py) is installed.
Ranks run one thread each (the suite oversubscribes a 2-core machine) and the torch
reference kernels: ``TRITON_INTERPRET`` (set by the kernel tests' conftest on CPU
machines) is removed, since the interpreter would make every step take seconds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from twinfer.exec.launch import find_mpiexec, repo_pythonpath

REPO = Path(__file__).resolve().parents[2]
MPIEXEC = find_mpiexec()
HAS_MPI = MPIEXEC is not None and importlib.util.find_spec("mpi4py") is not None
REL_TOL = 1e-5


def pytest_configure(config):
    config.addinivalue_line("markers", "mpi: runs ranks under mpiexec (skipped without it)")


def pytest_collection_modifyitems(config, items):
    for item in items:  # (gpu and multigpu: tests/conftest.py)
        if "mpi" in item.keywords and not HAS_MPI:
            item.add_marker(pytest.mark.skip(reason="needs mpiexec and mpi4py (Open MPI)"))


@pytest.fixture
def torch_kernels(monkeypatch):
    """In-process tests: the kernels' torch references, not Triton's interpreter."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")


def rank_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    # Keeps what the caller had on PYTHONPATH (the device machine's wheels live there).
    env = {**os.environ, "PYTHONPATH": repo_pythonpath(), "OMP_NUM_THREADS": "1",
           **(extra or {})}
    env.pop("TRITON_INTERPRET", None)
    return env


class ExecRun:
    """One ``python -m twinfer.exec`` run on the CPU and what it left behind."""

    def __init__(self, tmp_path: Path, scenario: dict, name: str = "run") -> None:
        self.dir = tmp_path / name
        self.dir.mkdir()
        self.scenario_path = self.dir / "scenario.yaml"
        self.scenario_path.write_text(yaml.safe_dump(scenario))
        self.out = self.dir / "results.json"
        self.logits_path = self.dir / "logits.npz"
        self.proc: subprocess.CompletedProcess | None = None

    def run(self, *extra: str, env: dict[str, str] | None = None, timeout: float = 150,
            device: str = "cpu") -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "twinfer.exec", str(self.scenario_path), "--device", device,
               "--out", str(self.out), "--arrivals", "batch", "--dump-logits",
               str(self.logits_path), *extra]
        self.proc = subprocess.run(cmd, cwd=self.dir, env=rank_env(env), capture_output=True,
                                   text=True, timeout=timeout)
        return self.proc

    def results(self) -> dict:
        return json.loads(self.out.read_text())

    def logits(self) -> dict[str, np.ndarray]:
        with np.load(self.logits_path) as data:
            return dict(data)


@pytest.fixture
def mpiexec() -> tuple[str, dict[str, str]]:
    """(the mpiexec binary, the environment ranks run with)."""
    return MPIEXEC, rank_env()


@pytest.fixture
def exec_run(tmp_path):
    return lambda scenario, name="run": ExecRun(tmp_path, scenario, name)


def reference_outputs(scenario: dict, source=None,
                      device: str = "cpu") -> dict[int, tuple[list[int], np.ndarray]]:
    """Greedy tokens and logits of every request from the cache-free single-process model."""
    from twinfer.exec.reference import greedy_reference, reference_model
    from twinfer.exec.text import sequences
    from twinfer.spec import scenario_from_dict

    sc = scenario_from_dict(scenario)
    model = reference_model(sc.model, source, device=device)
    out = {}
    for seq in sequences(sc.requests(), sc.model.vocab, sc.workload.seed):
        tokens, logits = greedy_reference(model, seq.prompt, seq.max_new)
        out[seq.rid] = (tokens, logits.cpu().numpy())
    return out


def assert_matches(got: dict[str, np.ndarray], expected: dict, rel_tol: float = REL_TOL) -> None:
    """Every request's tokens identical and logits within ``rel_tol`` of the reference."""
    assert expected
    for rid, (tokens, logits) in expected.items():
        assert got[f"tokens_r{rid}"].tolist() == tokens, f"request {rid}: tokens differ"
        mine = got[f"r{rid}"]
        assert mine.shape == logits.shape, f"request {rid}: {mine.shape} vs {logits.shape}"
        rel = np.abs(mine - logits).max() / np.abs(logits).max()
        assert rel <= rel_tol, f"request {rid}: relative error {rel:.2e}"


@pytest.fixture
def check_reference():
    """``check(scenario, logits_npz_dict, source=None, device="cpu", rel_tol=1e-5)``:
    compare an executor run with the reference on ``device``."""

    def check(scenario: dict, got: dict, source=None, device: str = "cpu",
              rel_tol: float = REL_TOL) -> None:
        import torch

        with torch.inference_mode():
            assert_matches(got, reference_outputs(scenario, source, device), rel_tol)

    return check
