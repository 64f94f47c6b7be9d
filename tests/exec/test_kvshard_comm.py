"""KV-sharded decode variants under mpiexec: two gloo ranks on CPU, two GPUs if present.

The benchmark module is the test driver (as Iris's test_sp_fd.py is): its
``correctness`` case checks every variant against the single-device reference and
its ``compare`` case writes the timing JSON.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from twinfer.exec.kvshard_comm import make_attention
from twinfer.exec.launch import repo_pythonpath

REPO = Path(__file__).resolve().parents[2]
MPIEXEC = shutil.which("mpiexec") or shutil.which("mpirun")
needs_mpi = pytest.mark.skipif(MPIEXEC is None, reason="needs mpiexec (Open MPI)")


def _bench(tmp_path: Path, *args: str, np_: int = 2, timeout: float = 120) -> dict:
    out = tmp_path / "results.json"
    cmd = [MPIEXEC, "--allow-run-as-root", "--oversubscribe", "-n", str(np_), sys.executable,
           "-m", "twinfer.exec.kvshard_bench", "--out", str(out), *args]
    env = {**os.environ, "PYTHONPATH": repo_pythonpath(), "OMP_NUM_THREADS": "1"}
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


@needs_mpi
def test_cpu_variants_match_the_single_device_reference(tmp_path):
    report = _bench(tmp_path, "--case", "correctness", "--device", "cpu")
    assert report["ok"] and report["world"] == 2
    variants = {(r["variant"], r["rank"]) for r in report["results"]}
    # fused needs GPUs: it is left out on CPU, cleanly.
    assert variants == {(v, r) for v in ("single", "allgather", "mpi") for r in (0, 1)}
    assert {(r["batch"], r["context"]) for r in report["results"]} == {
        (1, 37), (1, 300), (3, 37), (3, 300)}
    for r in report["results"]:
        assert r["max_abs_err"] < 2e-6, r  # fp32, against float64


@needs_mpi
def test_cpu_compare_writes_times_for_each_variant(tmp_path):
    report = _bench(tmp_path, "--case", "compare", "--device", "cpu", "--batches", "2",
                    "--contexts", "256", "--iters", "3", "--warmup", "1")
    (row,) = report["results"]
    assert (row["batch"], row["context"], row["shard_tokens"]) == (2, 256, 128)
    assert set(row["median_us"]) == {"local", "allgather", "mpi"}
    assert all(t > 0 for t in row["median_us"].values())
    # 2 sequences x 8 query heads x (64 + 1 LSE) fp32 values
    assert row["exchanged_bytes_per_rank"] == 2 * 8 * 65 * 4
    assert "speedup_fused_vs_allgather" not in row


@needs_mpi
@pytest.mark.multigpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_gpu_all_variants_including_fused(tmp_path):
    report = _bench(tmp_path, "--case", "correctness", "--device", "cuda", timeout=600)
    assert report["ok"]
    assert {r["variant"] for r in report["results"]} == {"single", "allgather", "mpi", "fused"}


def test_unknown_and_cpu_fused_variants_are_refused():
    with pytest.raises(ValueError, match="use one of allgather, mpi, fused"):
        make_attention("ring", None, torch.device("cpu"))
    with pytest.raises(ValueError, match="needs CUDA GPUs"):
        make_attention("fused", None, torch.device("cpu"))
