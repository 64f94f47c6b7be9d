"""Golden results of the hetero, FA Pool and KV-sharded scenarios (and seed 003's).

Each scenario is simulated (SimPy engine) and, when it has a baseline or a sweep,
compared over the sweep; the metrics, rounded to 4 significant digits, must equal
the reviewed file tests/scenarios/golden/<name>.txt. After an intended change of the
twin or of a profile, regenerate with ``TWINFER_UPDATE_GOLDEN=1 pytest tests/scenarios``
and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from twinfer.sim.simulate import simulate
from twinfer.sim.sweep import sweep_compare, sweep_rows
from twinfer.spec import load_scenario

GOLDEN = Path(__file__).parent / "golden"
SCENARIOS = ["fa_pool_paper", "fa_pool_h200_base1_pool1", "hexgen_mixed", "kv_sharded_decode",
             "llama3_8b_h200_pp2", "mistral7b_tp4"]


def _g(x: float) -> str:
    return f"{x:.4g}"


def render(name: str) -> str:
    scenario = load_scenario(name)
    r = simulate(scenario)
    lines = [f"scenario: {name}", f"layout: {r.layout}", f"gpus: {r.num_gpus}",
             f"requests: {r.requests}", f"output_tokens: {r.output_tokens}",
             f"ttft_ms: mean {_g(r.ttft_s.mean * 1e3)} p50 {_g(r.ttft_s.p50 * 1e3)} "
             f"p99 {_g(r.ttft_s.p99 * 1e3)}",
             f"tpot_ms: mean {_g(r.tpot_s.mean * 1e3)} p50 {_g(r.tpot_s.p50 * 1e3)} "
             f"p99 {_g(r.tpot_s.p99 * 1e3)}",
             f"tps: {_g(r.tps)}", f"makespan_s: {_g(r.makespan_s)}",
             f"comm_share: {_g(r.comm_share)}"]
    if scenario.baseline is not None or scenario.sweep is not None:
        header, rows = sweep_rows(sweep_compare(scenario))
        lines.append("sweep: " + " | ".join(header))
        lines += ["  " + " | ".join(row) for row in rows]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("name", SCENARIOS)
def test_golden(name):
    text = render(name)
    path = GOLDEN / f"{name}.txt"
    if os.environ.get("TWINFER_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.exists(), f"no golden file: run TWINFER_UPDATE_GOLDEN=1 pytest {__file__}"
    assert text == path.read_text()
