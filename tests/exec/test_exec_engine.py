"""The engine in one process (no MPI): paged cache, continuous batching, preemption,
sampling - checked against the cache-free single-process reference."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from twinfer.exec.engine import Engine, EngineOptions, ServeOptions
from twinfer.exec.kv_cache import CacheShape
from twinfer.exec.reference import greedy_reference, reference_model
from twinfer.exec.text import sequences
from twinfer.spec import Request, SchedulerSpec, SpecError, model_preset

pytestmark = pytest.mark.usefixtures("torch_kernels")

SPEC = model_preset("tiny-gqa")
CPU = torch.device("cpu")


def engine(pages: int, **sched: int) -> Engine:
    per_page = CacheShape(range(SPEC.layers), sched.get("kv_block_tokens", 4), SPEC.kv_heads,
                          SPEC.head_dim, torch.float32).bytes_per_page
    return Engine.local(SPEC, SchedulerSpec(kv_block_tokens=4, **sched),
                        EngineOptions(cpu_kv_budget_bytes=pages * per_page), CPU)


def requests(shapes: list[tuple[int, int]]) -> list[Request]:
    return [Request(i, 0.0, p, o) for i, (p, o) in enumerate(shapes)]


def check(report, reqs: list[Request]) -> None:
    model = reference_model(SPEC)
    for seq in sequences(reqs, SPEC.vocab, 0):
        tokens, logits = greedy_reference(model, seq.prompt, seq.max_new)
        assert report.outputs[seq.rid] == tokens
        got = np.stack(report.logits[seq.rid])
        rel = np.abs(got - logits.numpy()).max() / np.abs(logits.numpy()).max()
        assert rel <= 1e-5


def test_continuous_batching_matches_the_reference():
    reqs = requests([(5, 6), (9, 3), (3, 8), (13, 5), (7, 7)])
    eng = engine(160, max_prefill_tokens=16, max_running=3)
    report = eng.serve(sequences(reqs, SPEC.vocab, 0),
                       ServeOptions(wall_clock_arrivals=False, keep_logits=True))
    check(report, reqs)
    phases = [(s["phase"], s["batch"]) for s in report.steps]
    # 16 prompt tokens per prefill and 3 running at most: waiting requests prefill
    # between decode steps as others finish
    assert phases[:3] == [("prefill", 2), ("prefill", 1), ("decode", 3)]
    assert ("prefill", 1) in phases[3:]
    assert max(s["batch"] for s in report.steps) == 3


def test_preemption_under_a_small_cache_recomputes_exactly():
    reqs = requests([(5, 9), (7, 8), (3, 10), (6, 6)])
    eng = engine(8, max_prefill_tokens=64, max_running=8)
    assert eng.num_blocks == 8
    report = eng.serve(sequences(reqs, SPEC.vocab, 0),
                       ServeOptions(wall_clock_arrivals=False, keep_logits=True))
    assert sum(r["preemptions"] for r in report.requests) > 0
    assert report.kv_peak_pages <= 8
    check(report, reqs)


def test_temperature_sampling_is_seeded():
    reqs = requests([(4, 6), (6, 6)])
    eng = engine(64)

    def outputs(seed: int) -> dict:
        opts = ServeOptions(temperature=1.0, seed=seed, wall_clock_arrivals=False)
        return eng.serve(sequences(reqs, SPEC.vocab, 0), opts).outputs

    assert outputs(1) == outputs(1)
    assert outputs(1) != outputs(2)


def test_wall_clock_arrivals_are_honored():
    reqs = [Request(0, 0.0, 4, 3), Request(1, 0.15, 4, 3)]
    report = engine(64).serve(sequences(reqs, SPEC.vocab, 0), ServeOptions())
    late = next(r for r in report.requests if r["rid"] == 1)
    assert late["token_s"][0] >= 0.15
    first_prefill = report.steps[0]
    assert first_prefill["phase"] == "prefill" and first_prefill["batch"] == 1


def test_a_request_larger_than_the_cache_is_a_clear_error():
    with pytest.raises(SpecError, match="needs 5 KV pages of 4 tokens but the cache holds 4"):
        engine(4).serve(sequences(requests([(12, 6)]), SPEC.vocab, 0),
                        ServeOptions(wall_clock_arrivals=False))


INTERPRETED = """
import numpy as np, torch
from twinfer.exec.engine import Engine, EngineOptions, ServeOptions
from twinfer.exec.text import sequences
from twinfer.spec import Request, SchedulerSpec, model_preset
spec = model_preset("tiny", layers=1)
reqs = [Request(0, 0.0, 5, 3), Request(1, 0.0, 9, 3)]
eng = Engine.local(spec, SchedulerSpec(kv_block_tokens=4),
                   EngineOptions(cpu_kv_budget_bytes=1 << 20), torch.device("cpu"))
rep = eng.serve(sequences(reqs, spec.vocab, 0),
                ServeOptions(wall_clock_arrivals=False, keep_logits=True))
np.savez(OUT, **{f"r{r}": np.stack(v) for r, v in rep.logits.items()},
         **{f"tokens_r{r}": np.asarray(v) for r, v in rep.outputs.items()})
"""


@pytest.mark.slow
def test_triton_kernels_under_the_interpreter_match(tmp_path):
    """The executor's kernel calls (strided q/k/v views, int32 tables, int64 slots) run
    the Triton kernels themselves: Triton's CPU interpreter stands in for a GPU. In a
    fresh process, since the interpreter must be on before the kernels are imported."""
    out = tmp_path / "interpreted.npz"
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", f"OUT = {str(out)!r}" + INTERPRETED],
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    spec = model_preset("tiny", layers=1)
    model = reference_model(spec)
    with np.load(out) as got:
        for seq in sequences(requests([(5, 3), (9, 3)]), spec.vocab, 0):
            tokens, logits = greedy_reference(model, seq.prompt, seq.max_new)
            assert got[f"tokens_r{seq.rid}"].tolist() == tokens
            rel = np.abs(got[f"r{seq.rid}"] - logits.numpy()).max() / np.abs(logits.numpy()).max()
            assert rel <= 1e-5
