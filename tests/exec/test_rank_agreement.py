"""Ranks agree on every decision, even when what they measure differs.

On GPUs each rank measures its own free memory (NCCL buffers, other processes make it
differ); if ranks sized their KV caches or chose CUDA-graph buckets on their own, the
driver's block tables would point past a smaller rank's pool, or ranks would capture
different collective sequences and hang. Here two CPU ranks are given different KV
budgets (``TWINFER_TEST_KV_BUDGET``): the run must still match the reference, every
rank must report the same page count (the smallest), and ``TWINFER_DEBUG=1`` must make
each rank print the phases it entered.
"""

from __future__ import annotations

import re

import pytest

from twinfer.exec.engine import test_budget as kv_budget_for
from twinfer.exec.graphs import buckets_up_to

pytestmark = pytest.mark.mpi


def test_budget_hook_parses_per_rank(monkeypatch):
    monkeypatch.setenv("TWINFER_TEST_KV_BUDGET", "0:1000,1:50")
    assert [kv_budget_for(r, 7) for r in (0, 1, 2)] == [1000, 50, 7]


def test_buckets_depend_only_on_shared_inputs():
    assert buckets_up_to(1) == [1]
    assert buckets_up_to(40) == [1, 2, 4, 8, 16, 32, 40]


@pytest.mark.parametrize("layout", [{"kind": "uniform", "tp": 2}, {"kind": "uniform", "pp": 2}])
def test_ranks_with_different_memory_agree(layout, exec_run, check_reference):
    sc = {
        "name": "agree",
        "model": {"preset": "tiny-gqa", "kv_heads": 2},
        "cluster": {"nodes": [{"name": "n0", "gpu": "cpu", "count": 2,
                               "intra_link": "shm"}]},
        "layout": layout,
        "workload": {"requests": 3, "prompt_tokens": {"dist": "uniform", "min": 3, "max": 12},
                     "output_tokens": 4, "seed": 3},
        "scheduler": {"kv_block_tokens": 4},
    }
    run = exec_run(sc)
    # rank 1 has an eighth of rank 0's memory for KV
    proc = run.run(env={"TWINFER_TEST_KV_BUDGET": "0:4000000,1:500000", "TWINFER_DEBUG": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    check_reference(sc, run.logits())
    doc = run.results()
    pages = {r["rank"]: r["num_blocks"] for r in doc["ranks"] if "num_blocks" in r}
    assert len(pages) == 2 and len(set(pages.values())) == 1, pages
    for rank in (0, 1):
        said = re.findall(rf"\[twinfer r{rank} [^\]]*\] (.*)", proc.stderr)
        assert any(s.startswith("KV pages:") for s in said), proc.stderr[-2000:]
        mine, agreed = re.search(r"KV pages: (\d+) here, (\d+) agreed",
                                 "\n".join(said)).groups()
        assert int(agreed) == min(pages.values()) <= int(mine)
        assert any(s.startswith("step ") for s in said) and "done" in said
