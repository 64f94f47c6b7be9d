"""The kv_sharded and fa_pool layouts, run for real under mpiexec (gloo on CPU), against
the single-process reference: logits within 1e-5 (fp32) and identical greedy tokens
over a batch of unequal prompts whose KV spans several pages (as B's layout tests)."""

from __future__ import annotations

import pytest
from exec_scenarios import run_against_reference, tiny_scenario

pytestmark = [pytest.mark.mpi, pytest.mark.slow]


LAYOUTS = {
    "kv_sharded_allgather": tiny_scenario(
        "kvs_ag", {"kind": "kv_sharded", "tp": 2, "comm": "allgather"}, 2, 2, 5),
    "kv_sharded_mpi_kv_replicated": tiny_scenario(
        "kvs_mpi", {"kind": "kv_sharded", "tp": 2, "comm": "mpi"}, 2, 1, 6),
    # prompts of 3..14 tokens: those above 6 go to the pool, striped over p = 2 ranks
    # (or 1 for 7..6); the others stay on the base: every step mixes both
    "fa_pool_base1_pool2": tiny_scenario(
        "fap12", {"kind": "fa_pool", "base": {"tp": 1, "gpus": [0]}, "pool_gpus": [1, 2],
                  "threshold_tokens": 6, "policy": "per_threshold"}, 3, 2, 7),
    "fa_pool_tp2_pool1": tiny_scenario(
        "fap21", {"kind": "fa_pool", "base": {"tp": 2, "gpus": [0, 1]}, "pool_gpus": [2],
                  "threshold_tokens": 8, "policy": "all"}, 3, 2, 8),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layout_matches_single_process_reference(name, exec_run, check_reference):
    sc = LAYOUTS[name]
    doc = run_against_reference(exec_run, check_reference, sc)
    if sc["layout"]["kind"] == "kv_sharded":
        # every rank's pages hold all KV heads (of the tokens it owns), not a TP share:
        # 2 (K, V) x 4 layers x 4 tokens x kv_heads x 16 dims x 4 bytes
        kv_heads = sc["model"]["kv_heads"]
        assert [r["kv_bytes_per_page"] for r in doc["ranks"]] == [2048 * kv_heads] * 2
    if sc["layout"]["kind"] == "fa_pool":
        pool = sc["layout"]["pool_gpus"]
        served = [r for r in doc["ranks"] if r.get("role") == "pool"]
        assert [r["rank"] for r in served] == pool
        # the pool answered every layer of the steps with long sequences
        assert all(r["attend_calls"] > 0 and r["attend_calls"] % 4 == 0 for r in served)
        for r in served:
            # one step header per step (at most one per step of the run), then per layer
            # exactly one tensor message from the base and one back
            assert 0 < r["step_headers"] <= len(doc["steps"])
            assert r["attend_calls"] == 4 * r["step_headers"]
            assert r["layer_messages_in"] == r["layer_messages_out"] == r["attend_calls"]
