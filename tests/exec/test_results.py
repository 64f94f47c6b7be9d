"""Results assembly: metrics, merging per-rank timings, atomic writes; text and launch."""

from __future__ import annotations

import json
import os
import sys

import pytest

from twinfer.exec.__main__ import parse_args
from twinfer.exec.engine import ServeReport
from twinfer.exec.launch import ExecArgs, find_mpiexec, mpiexec_command, rank_env, repo_root
from twinfer.exec.results import merge_steps, request_metrics, stats
from twinfer.exec.text import ByteTokenizer
from twinfer.spec import SpecError
from twinfer.spec.io import write_json_atomic


def test_request_metrics_ttft_tpot_e2e():
    req = {"rid": 3, "arrival_s": 1.0, "token_s": [1.5, 1.7, 1.9, 2.1], "output_tokens": 4}
    m = request_metrics(req)
    assert m["ttft_s"] == pytest.approx(0.5)
    assert m["tpot_s"] == pytest.approx(0.2)
    assert m["e2e_s"] == pytest.approx(1.1)
    assert "token_s" not in m
    assert request_metrics({**req, "token_s": [2.0]})["tpot_s"] is None


def test_stats_percentiles():
    s = stats([1.0, 2.0, 3.0, 4.0])
    assert s == {"mean": 2.5, "p50": 2.5, "p99": pytest.approx(3.97)}
    assert stats([]) == {"mean": None, "p50": None, "p99": None}


def test_each_step_gets_every_ranks_timing():
    rec = {"span_s": 1.0, "compute_s": 0.6, "comm_s": 0.3, "wait_s": 0.1}
    driver = ServeReport(1, [{"step": 0, **rec}],
                         steps=[{"step": 0, "pipeline": 0, "start_s": 0.0, "phase": "decode"}])
    follower = ServeReport(0, [{"step": 0, **rec, "comm_s": 0.2}])
    ranks = [{"rank": 0, "pipeline": 0}, {"rank": 1, "pipeline": 0}]
    steps = merge_steps([follower, driver], ranks)
    assert steps[0]["ranks"]["0"]["comm_s"] == 0.2
    assert steps[0]["ranks"]["1"] == rec


def test_atomic_write_leaves_no_temporary(tmp_path):
    path = write_json_atomic(tmp_path / "sub" / "r.json", {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(path.parent) == ["r.json"]


def test_byte_tokenizer_streams_multibyte_characters():
    tok = ByteTokenizer(256)
    ids = tok.encode("héllo €")
    assert tok.decode(ids) == "héllo €"
    assert "".join(tok.stream(i) for i in ids) + tok.finish() == "héllo €"
    assert tok.stream(0xE2) == "" and tok.finish() == "\ufffd"  # cut mid-character
    assert tok.decode([104, 300]) == "h\ufffd"
    with pytest.raises(SpecError, match="256"):
        ByteTokenizer(100)


def test_args_survive_the_trip_to_the_ranks():
    args = ExecArgs(scenario="s.yaml", out="o.json", device="cpu", checkpoint="ck",
                    temperature=0.5, prompt="hi there", stream=True, cuda_graphs=False,
                    arrivals="batch", warmup=False)
    assert parse_args(args.argv()) == args
    with pytest.raises(SpecError, match="--arrivals"):
        ExecArgs(scenario="s", arrivals="poisson")


def test_mpiexec_command_and_environment():
    env = rank_env(4, "cpu")
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(repo_root())
    generic = mpiexec_command("/nonexistent/mpiexec", 4, ["s.yaml"], env)
    assert generic == ["/nonexistent/mpiexec", "-n", "4", sys.executable, "-m", "twinfer.exec",
                       "s.yaml"]
    binary = find_mpiexec()
    if binary is None:
        pytest.skip("no mpiexec")
    cmd = mpiexec_command(binary, 4, ["s.yaml"], env)
    if "--bind-to" in cmd:  # Open MPI: no core binding, PYTHONPATH exported
        assert cmd[cmd.index("-x", cmd.index("--bind-to")) + 1] == "PYTHONPATH"
        assert ("--allow-run-as-root" in cmd) == (os.geteuid() == 0)


def test_the_warm_up_packs_what_the_first_prefill_step_will():
    """The warm-up serve uses the first prefill step's prompts (budget, running cap,
    micro-batch share), or the longest prompt alone when that is longer."""
    from types import SimpleNamespace

    from twinfer.exec.rank import warmup_prompts

    sched = SimpleNamespace(max_prefill_tokens=1024, max_running=256)
    assert warmup_prompts([256] * 4, sched, 1, 8192) == [256] * 4
    assert warmup_prompts([512] * 16, sched, 1, 8192) == [512, 512]  # token budget
    assert warmup_prompts([256] * 8, sched, 2, 8192) == [256] * 4  # PP: one group's share
    assert warmup_prompts([100, 900], sched, 1, 8192) == [100, 900]
    assert warmup_prompts([8, 4000], sched, 1, 8192) == [1024]  # the longest, clipped
    assert warmup_prompts([4], sched, 1, 8192) == [16]


def test_the_eager_decode_warm_up_covers_the_largest_decode_batch():
    from types import SimpleNamespace

    from twinfer.exec.rank import warmup_decode_batch

    sched = SimpleNamespace(max_prefill_tokens=256, max_running=48)
    assert warmup_decode_batch(4, sched, 1) == 4
    assert warmup_decode_batch(64, sched, 1) == 48  # the running cap
    assert warmup_decode_batch(32, sched, 2) == 16  # PP: one micro-batch group's share
    assert warmup_decode_batch(0, sched, 1) == 1


def test_a_bad_kernel_switch_is_refused_before_any_rank_starts():
    """The kernels read TWINFER_LAUNCH / TWINFER_PDL* when imported; the launcher checks
    them first, so a bad value is one SpecError (exit 2), not an MPI abort per rank."""
    import subprocess

    from twinfer.exec.launch import check_switches

    check_switches()  # this process's settings are valid
    proc = subprocess.run([sys.executable, "-c", "from twinfer.exec.launch import "
                           "check_switches; check_switches()"],
                          env={**os.environ, "TWINFER_PDL_TRIGGER": "late"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert ("SpecError: TWINFER_PDL_TRIGGER: 'late' is not valid — use one of start, end, "
            "exit") in proc.stderr
