"""Every layout kind, run for real under mpiexec (gloo on CPU), against the reference.

For TP=2, PP=2, TP=2 x PP=2 and HexGen's asymmetric TP=2-then-TP=1 pipeline: the
logits of every generated token of every request equal the single-process, cache-free
reference (fp32, relative error <= 1e-5) and the greedy tokens are identical, over a
batch of unequal prompts whose KV spans several pages. Layouts with tp > kv_heads
replicate the KV heads.
"""

from __future__ import annotations

import pytest
from exec_scenarios import run_against_reference, tiny_scenario

pytestmark = [pytest.mark.mpi, pytest.mark.slow]


LAYOUTS = {
    # tp=2 > kv_heads=1: both ranks hold a replica of the one KV head
    "tp2_kv_replicated": tiny_scenario("tp2", {"kind": "uniform", "tp": 2}, 2, 1, 1),
    "pp2": tiny_scenario("pp2", {"kind": "uniform", "pp": 2}, 2, 2, 2),
    "tp2_pp2": tiny_scenario("tp2pp2", {"kind": "uniform", "tp": 2, "pp": 2}, 4, 2, 3),
    "hetero_tp2_tp1": tiny_scenario("hetero", {"kind": "hetero", "pipelines": [{"stages": [
        {"gpus": [0, 1], "layers": 3}, {"gpus": [2], "layers": 1}]}]}, 3, 1, 4),
    # two independent pipelines on GPUs 1 and 2; rank 0 holds nothing and writes results
    "replicas_rank0_idle": tiny_scenario("replicas", {"kind": "uniform", "replicas": 2,
                                                      "gpus": [1, 2]}, 3, 2, 5),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layout_matches_single_process_reference(name, exec_run, check_reference):
    sc = LAYOUTS[name]
    doc = run_against_reference(exec_run, check_reference, sc)
    assert len(doc["versions"]["kernels"]) == 12  # the kernels' code fingerprint
    assert {s["phase"] for s in doc["steps"]} == {"prefill", "decode"}
    pipes = [sorted(g for st in p["stages"] for g in st["gpus"])
             for p in doc["placement"]["pipelines"]]
    drivers = {r["rank"] for r in doc["ranks"] if r.get("driver")}
    for step in doc["steps"]:  # every rank timed every step of its pipeline
        assert sorted(map(int, step["ranks"])) == pipes[step["pipeline"]]
        for rank, rec in step["ranks"].items():
            assert rec["compute_s"] >= 0 and rec["comm_s"] >= 0 and rec["wait_s"] >= 0
            assert rec["host_s"] > 0
            assert 0 <= rec["host_cpu_s"] <= rec["host_s"] + 1e-3  # one thread's CPU time
            if int(rank) in drivers:  # on CPU the host runs the step, inside its wall
                assert rec["host_s"] <= step["wall_s"]
        host = step["host"]  # the driver's host time, split
        assert set(host) - {"steal_s"} == {"plan_s", "launch_s", "launch_cpu_s", "sample_s",
                                           "complete_s", "gc_s", "gc_collections", "gc_full",
                                           "jit_s", "jit_compiles"}
        assert host["jit_compiles"] == 0  # the CPU runs torch's ops, no Triton
        assert ("steal_s" in host) == (step["phase"] == "prefill")
        host = {k: v for k, v in host.items() if v is not None}  # steal_s: None off Linux
        assert host["launch_cpu_s"] <= host["launch_s"] + 1e-3
        assert host["gc_full"] <= host["gc_collections"]
        assert host["gc_s"] <= step["wall_s"] + host["complete_s"] + host["plan_s"]
        assert min(host.values()) >= 0 and host["launch_s"] + host["sample_s"] <= step["wall_s"]
        assert ("allocator" in step) == (step["phase"] == "prefill")
    if len(pipes) > 1:
        assert {r["pipeline"] for r in doc["requests"]} == set(range(len(pipes)))
    if "pp" in sc["layout"] or sc["layout"]["kind"] == "hetero":
        # two micro-batches were in flight through the stages
        assert {s["micro_batch"] for s in doc["steps"]} == {0, 1}


def test_interactive_prompt_streams_its_tokens(exec_run):
    from twinfer.exec.text import ByteTokenizer

    sc = {"model": "tiny", "layout": {"kind": "uniform"},
          "cluster": {"nodes": [{"name": "n0", "gpu": "cpu", "count": 1}]}}
    run = exec_run(sc)
    proc = run.run("--prompt", "héllo", "--stream", "--max-new-tokens", "6", "--temperature",
                   "0.8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    tokens = run.logits()["tokens_r0"].tolist()
    assert len(tokens) == 6
    text = ByteTokenizer(256).decode(tokens)
    assert proc.stdout.startswith(text + "\n")
    doc = run.results()
    assert doc["summary"]["requests"] == 1 and doc["requests"][0]["prompt_tokens"] == 6


@pytest.mark.parametrize("layout", [{"kind": "uniform", "tp": 2}, {"kind": "uniform", "pp": 2}])
def test_plans_over_rendezvous_do_not_deadlock(layout, exec_run, check_reference):
    """Plans far over the eager limit, sent over Open MPI's TCP transport: a follower's
    ``Recv`` completes only while the driver progresses MPI, which it does from its send
    thread while it waits in an all-reduce (this hung before the thread existed)."""
    sc = tiny_scenario("rendezvous", layout, 2, 2, 6)
    sc["workload"] = {"requests": 24, "prompt_tokens": {"dist": "uniform", "min": 150,
                                                        "max": 300},
                      "output_tokens": 3, "seed": 6}
    sc["scheduler"] = {"kv_block_tokens": 16}
    run = exec_run(sc)
    proc = run.run(env={"OMPI_MCA_btl": "self,tcp"}, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    check_reference(sc, run.logits())
    prefill = [s for s in run.results()["steps"] if s["phase"] == "prefill"]
    assert max(s["tokens"] for s in prefill) > 1000  # a plan of tens of kilobytes


def test_op_profile_writes_each_ranks_table(exec_run, tmp_path):
    """TWINFER_PROFILE_DIR: every rank writes its operators (torch.profiler) there."""
    run = exec_run(tiny_scenario("prof", {"kind": "uniform", "tp": 2}, 2, 2, 7))
    proc = run.run(env={"TWINFER_PROFILE_DIR": str(tmp_path / "prof")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        table = (tmp_path / "prof" / f"rank{rank}.txt").read_text()
        assert "Name" in table and "aten::" in table
