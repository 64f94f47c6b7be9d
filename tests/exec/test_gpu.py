"""The executor on GPUs: Triton kernels, CUDA-graph decode, NCCL (device machine only).

fp32 models: the Triton kernels compute in fp32 with IEEE dot products and torch's
matmuls do not use TF32 by default, so the logits match the cache-free reference (torch
SDPA) to 1e-4 relative and greedy tokens are identical. Seeded weights are drawn by the
CUDA generator here, so the reference runs on the GPU too.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

from twinfer.exec.engine import Engine, EngineOptions, ServeOptions
from twinfer.exec.reference import greedy_reference, reference_model
from twinfer.exec.text import sequences
from twinfer.kernels import backend
from twinfer.spec import Request, SchedulerSpec, model_preset

pytestmark = pytest.mark.usefixtures("torch_kernels", "free_gpu")
GPU_TOL = 1e-4


@pytest.fixture
def free_gpu():
    """Each engine takes a share of the GPU for its KV pool: give it back after a test."""
    yield
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@pytest.mark.gpu
@pytest.mark.parametrize(("graphs", "pdl"), [(True, "graphs"), (True, "off"), (False, "on"),
                                             (False, "off")])
def test_one_gpu_engine_matches_the_reference(graphs, pdl, monkeypatch):
    """Decode replayed from graphs or eager, the kernels launched with programmatic
    dependent launch or not (TWINFER_PDL): the same tokens and logits."""
    monkeypatch.setattr(backend, "PDL_MODE", pdl)
    with backend.pdl_scope():
        assert backend.pdl_active() == (pdl != "off" and torch.cuda.get_device_capability()[0] >= 9)
    spec = model_preset("tiny-gqa")
    device = torch.device("cuda")
    eng = Engine.local(spec, SchedulerSpec(kv_block_tokens=16, max_prefill_tokens=32,
                                           gpu_memory_utilization=0.3),
                       EngineOptions(cuda_graphs=graphs), device)
    reqs = [Request(i, 0.0, n, m) for i, (n, m) in enumerate([(5, 6), (19, 9), (33, 4),
                                                               (8, 12), (40, 7)])]
    report = eng.serve(sequences(reqs, spec.vocab, 0),
                       ServeOptions(wall_clock_arrivals=False, keep_logits=True))
    assert report.cuda_graphs == graphs
    if graphs:
        decode = [s for s in report.steps if s["phase"] == "decode"]
        assert decode and eng.info.get("cuda_graph_error") is None
    model = reference_model(spec, device="cuda")
    for seq in sequences(reqs, spec.vocab, 0):
        tokens, logits = greedy_reference(model, seq.prompt, seq.max_new)
        assert report.outputs[seq.rid] == tokens
        got, want = np.stack(report.logits[seq.rid]), logits.cpu().numpy()
        assert np.abs(got - want).max() / np.abs(want).max() <= GPU_TOL


@pytest.mark.gpu
def test_bf16_engine_runs_with_graphs_and_reports_memory():
    spec = model_preset("tiny-gqa", dtype="bf16", layers=8)
    eng = Engine.local(spec, SchedulerSpec(gpu_memory_utilization=0.5), EngineOptions(),
                       torch.device("cuda"))
    assert 0.3 < eng.info["kv_fraction_of_left"] <= 1.0
    reqs = [Request(i, 0.0, 100 + 37 * i, 16) for i in range(6)]
    report = eng.serve(sequences(reqs, spec.vocab, 0), ServeOptions(wall_clock_arrivals=False))
    assert report.cuda_graphs
    assert all(len(out) == 16 for out in report.outputs.values())
    graphed = [t for t in report.timings if t["comm_s"] is None]
    assert graphed  # decode steps were replayed


@pytest.mark.gpu
def test_bf16_graphs_with_and_without_pdl_give_the_same_tokens(monkeypatch):
    """A race that PDL could open (a kernel reading its predecessor's output before the
    grid-dependency wait) would change bf16 greedy tokens over 48 decode steps of 8
    layers; the same seeds must give the same tokens with and without it."""
    spec = model_preset("tiny-gqa", dtype="bf16", layers=8)
    reqs = [Request(i, 0.0, 60 + 41 * i, 48) for i in range(5)]
    outputs = {}
    for pdl, trigger in (("graphs", "start"), ("graphs", "end"), ("off", "start")):
        monkeypatch.setattr(backend, "PDL_MODE", pdl)
        monkeypatch.setattr(backend, "PDL_TRIGGER", backend.PDL_TRIGGERS[trigger])
        eng = Engine.local(spec, SchedulerSpec(gpu_memory_utilization=0.3), EngineOptions(),
                           torch.device("cuda"))
        report = eng.serve(sequences(reqs, spec.vocab, 0),
                           ServeOptions(wall_clock_arrivals=False))
        assert report.cuda_graphs
        outputs[pdl, trigger] = report.outputs
        del eng
        gc.collect()
        torch.cuda.empty_cache()
    assert outputs["graphs", "start"] == outputs["off", "start"]
    assert outputs["graphs", "end"] == outputs["off", "start"]


@pytest.mark.mpi
@pytest.mark.multigpu
@pytest.mark.parametrize("layout", [
    {"kind": "uniform", "tp": 2},
    {"kind": "uniform", "pp": 2},
    # HexGen's asymmetric split: 3 layers on GPU 0, 1 on GPU 1
    {"kind": "hetero", "pipelines": [{"stages": [{"gpus": [0], "layers": 3},
                                                 {"gpus": [1], "layers": 1}]}]},
    # FA Pool: prompts above 16 tokens attend on the pool GPU, the others on the base
    {"kind": "fa_pool", "base": {"tp": 1, "gpus": [0]}, "pool_gpus": [1],
     "threshold_tokens": 16, "policy": "all"},
    {"kind": "kv_sharded", "tp": 2, "comm": "fused"},
], ids=["tp2", "pp2", "hetero", "fa_pool", "kv_sharded_fused"])
def test_two_gpus_match_the_reference(layout, exec_run, check_reference):
    scenario = {
        "model": {"preset": "tiny-gqa", "kv_heads": 1},
        "cluster": {"nodes": [{"name": "n0", "gpu": "gpu", "count": 2}]},
        "layout": layout,
        "workload": {"requests": 6, "prompt_tokens": {"dist": "uniform", "min": 3, "max": 40},
                     "output_tokens": 6, "seed": 5},
        "scheduler": {"kv_block_tokens": 16, "gpu_memory_utilization": 0.5},
    }
    run = exec_run(scenario)
    proc = run.run(device="cuda", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_reference(scenario, run.logits(), device="cuda", rel_tol=GPU_TOL)
    # the plain layouts replay decode graphs; FA Pool and kv_sharded decode eagerly
    assert run.results()["summary"]["cuda_graphs"] == (layout["kind"] in ("uniform",
                                                                          "hetero"))
    if layout.get("tp") == 2:  # the TP all-reduces went through symmetric memory
        ranks = run.results()["ranks"]
        assert all("one-shot" in r["tp_all_reduce"] for r in ranks), ranks


@pytest.mark.mpi
@pytest.mark.multigpu
def test_one_shot_all_reduce_matches_nccl_eager_and_in_graphs(mpiexec):
    """The symmetric-memory path against NCCL at 16 B-1 MiB, and 64 chained calls
    captured in a CUDA graph and replayed with fresh inputs (buffer reuse)."""
    import subprocess
    import sys

    binary, env = mpiexec
    proc = subprocess.run([binary, "-np", "2", sys.executable, "-m",
                           "twinfer.exec.symm_allreduce"], env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "PASS" in proc.stdout
