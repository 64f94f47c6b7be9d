"""The dashboard's pure parts: YAML <-> preset fields, timeline bars, length sweeps."""

from __future__ import annotations

import pytest
from ui_data import fa_pool_paper_doc

from twinfer.spec import load_scenario
from twinfer.ui.editor import (
    dump,
    layout_label,
    load_doc,
    parse,
    read_presets,
    shipped_yaml,
    write_preset,
)
from twinfer.ui.seqsweep import (
    SeqPoint,
    crossover,
    default_selection,
    layout_choices,
    seq_lengths,
    seq_sweep,
)
from twinfer.ui.timeline import Bar, bars_from_log, row_order

DEFAULT = "llama3_8b_h200_tp2"


def test_presets_read_the_shipped_default():
    values = read_presets(load_doc(shipped_yaml(DEFAULT)))
    assert values["model"] == "llama-3-8b"
    assert (values["gpu"], values["gpus_per_node"], values["nodes"]) == ("h200-sxm", 2, 1)
    assert (values["tp"], values["pp"], values["replicas"]) == (2, 1, 1)
    assert (values["requests"], values["prompt"], values["output"]) == (64, 1024, 256)
    assert (values["arrival"], values["rate"]) == ("poisson", 4.0)
    assert values["fa_threshold"] is None and values["kv_comm"] is None


def test_presets_say_none_where_a_field_is_not_one_number():
    doc = load_doc(shipped_yaml("hexgen_mixed"))
    values = read_presets(doc)
    assert values["gpu"] is None  # mixed cluster
    assert values["prompt"] is None and values["output"] is None  # distributions
    assert values["tp"] is None  # hetero layout: edited in the YAML


def test_write_preset_changes_one_field_and_keeps_the_rest():
    doc = load_doc(shipped_yaml(DEFAULT))
    new = write_preset(doc, "tp", 1)
    assert new["layout"] == {"kind": "uniform", "tp": 1}
    assert doc["layout"]["tp"] == 2  # the input is not mutated
    assert {k: v for k, v in new.items() if k != "layout"} == \
        {k: v for k, v in doc.items() if k != "layout"}
    assert parse(dump(new)).scenario.layout.tp == 1


@pytest.mark.parametrize(("field", "value", "check"), [
    ("model", "mistral-7b", lambda s: s.model.name == "mistral-7b"),
    ("gpu", "h100-sxm", lambda s: s.cluster.gpu_types() == ["h100-sxm"] * 2),
    ("nodes", 2, lambda s: s.cluster.num_gpus == 4 and s.cluster.nodes[1].name == "node1"),
    ("prompt", 2048, lambda s: s.workload.prompt_tokens == 2048),
    ("arrival", "batch", lambda s: s.workload.arrival.kind == "batch"),
    ("rate", 9.5, lambda s: s.workload.arrival.rate_per_s == 9.5),
])
def test_each_preset_lands_in_a_valid_scenario(field, value, check):
    doc = write_preset(load_doc(shipped_yaml(DEFAULT)), field, value)
    parsed = parse(dump(doc))
    assert parsed.error == "" and check(parsed.scenario)


def test_fa_pool_presets_resize_the_pool_after_the_base():
    doc = load_doc(shipped_yaml("fa_pool_paper"))
    assert read_presets(doc)["fa_pool"] == 32
    doc = write_preset(write_preset(doc, "fa_pool", 4), "fa_threshold", 8192)
    assert doc["layout"]["pool_gpus"] == [8, 9, 10, 11]
    scenario = parse(dump(doc)).scenario
    assert scenario.layout.threshold_tokens == 8192 and scenario.layout.num_gpus == 12


def test_changing_degrees_drops_an_explicit_gpu_list_that_no_longer_fits():
    doc = load_doc("model: llama-3-8b\ncluster: {nodes: [{gpu: h200-sxm, count: 4}]}\n"
                   "layout: {kind: uniform, tp: 2, gpus: [2, 3]}\n")
    assert "gpus" not in write_preset(doc, "tp", 4)["layout"]
    assert write_preset(doc, "pp", 1)["layout"]["gpus"] == [2, 3]


@pytest.mark.parametrize(("text", "start"), [
    ("model: [unclosed", "scenario YAML: malformed YAML at line 1"),
    ("- just\n- a list\n", "scenario YAML: the document is not a mapping"),
    ("model: llama-3-8b\ncluster: {nodes: [{gpu: h200-sxm, count: 2}]}\n"
     "layout: {kind: uniform, tp: 3}\n", "layout.tp: tp=3 does not divide"),
    ("model: llama-3-8b\ncluster: {nodes: [{gpu: h200-sxm, count: 2}]}\n"
     "layout: {kind: uniform}\nworkload: {requets: 3}\n", "workload.requets: unknown key"),
])
def test_parse_turns_bad_input_into_one_line(text, start):
    parsed = parse(text)
    assert parsed.scenario is None
    assert parsed.error.startswith(start) and "\n" not in parsed.error


@pytest.mark.parametrize(("layout", "label"), [
    ({"kind": "uniform", "tp": 8, "pp": 2}, "TP8 PP2"),
    ({"kind": "uniform", "tp": 1, "replicas": 4}, "TP1 x4"),
    ({"kind": "kv_sharded", "tp": 2, "comm": "fused"}, "KV-sharded TP2 fused"),
    ({"kind": "fa_pool", "base": {"tp": 8}, "pool_gpus": [8, 9], "threshold_tokens": 4096},
     "FA Pool TP8 + pool 2 @4096"),
    ({"kind": "hetero", "pipelines": [{"stages": [{"gpus": [0, 1], "layers": 20},
                                                  {"gpus": [2], "layers": 12}]}]},
     "hetero [tp2x20L + tp1x12L]"),
])
def test_layout_labels(layout, label):
    assert layout_label(layout) == label


def test_timeline_bars_follow_the_event_log():
    scenario = parse(shipped_yaml("llama3_8b_h200_pp2")).scenario
    log = [
        (0.0, "step", 0, 0, 0, 512), (0.0, "stage_start", 0, 0, 0), (1.0, "stage_end", 0, 0, 0),
        (0.0, "step", 0, 1, 3, 0), (1.0, "stage_start", 0, 0, 1), (1.5, "stage_end", 0, 0, 1),
        (1.25, "sent", 0, 0, 0),  # link free at 1.0: sent 1.0 -> 1.25
        (1.75, "sent", 0, 0, 1),  # requested at 1.5 while free: 1.5 -> 1.75
        (1.25, "stage_start", 0, 1, 0), (2.0, "stage_end", 0, 1, 0),
    ]
    bars = bars_from_log(scenario, log)
    assert bars == [
        Bar("p0 s0 mb0 (GPU 0)", 0.0, 1.0, "prefill", "prefill 512 tok"),
        Bar("p0 s0 mb1 (GPU 0)", 1.0, 0.5, "decode", "decode 3 seq"),
        Bar("p0 link s0->s1", 1.0, 0.25, "send", "activations p0 s0->s1"),
        Bar("p0 link s0->s1", 1.5, 0.25, "send", "activations p0 s0->s1"),
        Bar("p0 s1 mb0 (GPU 1)", 1.25, 0.75, "prefill", "prefill 512 tok"),
    ]
    assert row_order(scenario, bars) == ["p0 s0 mb0 (GPU 0)", "p0 s0 mb1 (GPU 0)",
                                         "p0 link s0->s1", "p0 s1 mb0 (GPU 1)"]


def test_a_queued_send_starts_when_the_link_frees():
    scenario = parse(shipped_yaml("llama3_8b_h200_pp2")).scenario
    log = [(0.0, "stage_start", 0, 0, 0), (1.0, "stage_end", 0, 0, 0),
           (1.0, "stage_start", 0, 0, 1), (1.1, "stage_end", 0, 0, 1),
           (1.5, "sent", 0, 0, 0), (1.9, "sent", 0, 0, 1)]
    sends = [b for b in bars_from_log(scenario, log) if b.kind == "send"]
    assert [(b.start_s, b.dur_s) for b in sends] == [(1.0, 0.5), (1.5, pytest.approx(0.4))]


def test_fa_pool_steps_hold_the_pool_row():
    from twinfer.sim import simulate

    scenario = load_scenario("fa_pool_h200_base1_pool1")
    log: list = []
    simulate(scenario, log=log)
    bars = bars_from_log(scenario, log)
    assert any(b.row == "FA pool" and b.kind == "pool" for b in bars)
    assert row_order(scenario, bars)[-1] == "FA pool"


def test_sequence_lengths_fit_the_model_positions():
    assert seq_lengths(load_scenario(DEFAULT)) == [256, 512, 1024, 2048, 4096]
    assert seq_lengths(load_scenario("fa_pool_paper")) == [1024, 2048, 4096, 8192, 16384,
                                                           32768]


def test_fa_pool_crosses_its_static_baseline_in_decode_tpot():
    scenario = parse(dump(fa_pool_paper_doc())).scenario
    choices = layout_choices(scenario)
    picked = default_selection(choices)
    assert [p.split(" (")[-1] for p in picked] == ["scenario)", "baseline)"]
    points = seq_sweep(scenario, {k: choices[k] for k in picked}, seq_lengths(scenario))
    assert not [p.error for p in points if p.error]
    at = crossover(points, picked[0], picked[1], "decode_tpot_s")
    # below the pool threshold FA Pool is the slower layout; past it, it stays ahead
    assert at is not None and 1024 < at <= 16384


def test_crossover_rules():
    series = {"a": (3, 2, 1, 1), "b": (2, 2, 2, 2)}
    pts = [SeqPoint(name, n, decode_tpot_s=t) for name, times in series.items()
           for n, t in zip((1, 2, 4, 8), times, strict=True)]
    assert crossover(pts, "a", "b") == 4
    assert crossover(pts, "b", "a") is None
    assert crossover(pts, "a", "b", "decode_tps") is None  # NaN everywhere


def test_twinfer_ui_binds_localhost_unless_told():
    from twinfer.ui.serve import APP, streamlit_command

    cmd = streamlit_command(8600)
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[4] == str(APP) and APP.exists()
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--server.port") + 1] == "8600"
    wide = streamlit_command(8601, host="0.0.0.0")
    assert wide[wide.index("--server.address") + 1] == "0.0.0.0"


def test_ui_imports_no_executor_or_gpu_stack():
    import ast
    from pathlib import Path

    import twinfer.ui

    forbidden = {"torch", "triton", "mpi4py", "twinfer.exec", "twinfer.kernels"}
    offenders = {}
    for path in sorted(Path(twinfer.ui.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            bad = [n for n in names if any(n == f or n.startswith(f + ".") for f in forbidden)]
            if bad:
                offenders[path.name] = bad
    assert not offenders
