"""Specs load when good and explain themselves when bad (field named, fix given)."""

from __future__ import annotations

import json

import pytest

from twinfer.spec import (
    DEFAULT_SCENARIO,
    SpecError,
    load_scenario,
    model_from_hf_config,
    model_preset,
    preset_names,
    scenario_from_dict,
    shipped_scenarios,
)


def base(**overrides: object) -> dict:
    doc = {"model": "llama-3-8b",
           "cluster": {"nodes": [{"name": "n0", "gpu": "h200-sxm", "count": 2}]},
           "layout": {"kind": "uniform", "tp": 2},
           "workload": {"requests": 4, "prompt_tokens": 128, "output_tokens": 8}}
    doc.update(overrides)
    return doc


# ---- good ------------------------------------------------------------------------------
def test_presets_derive_their_sizes():
    assert set(preset_names()) >= {"llama-3-8b", "mistral-7b", "llama-2-70b", "llama-3-70b",
                                   "tiny"}
    m = model_preset("llama-3-8b")
    # 32 x (4096 x (4096 + 2 x 1024) + 4096 x 4096 + 3 x 4096 x 14336 + 2 x 4096)
    # + 2 x 128256 x 4096 + 4096
    assert m.params == 8_030_261_248
    assert m.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2
    assert m.head_dim == 128
    assert model_preset("llama-2-7b").params == 6_738_415_616


def test_hf_config_import(tmp_path):
    cfg = {"num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32,
           "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 32000,
           "hidden_act": "silu", "torch_dtype": "bfloat16", "rope_theta": 1e6,
           "max_position_embeddings": 32768}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    m = model_from_hf_config(tmp_path, name="mistral")
    assert m.params == model_preset("mistral-7b").params
    assert (m.dtype, m.ffn_kind, m.max_position) == ("bf16", "swiglu", 32768)


def test_every_shipped_scenario_loads():
    shipped = shipped_scenarios()
    assert DEFAULT_SCENARIO in shipped
    for name in shipped:
        scenario = load_scenario(name)
        assert scenario.name == name
        assert scenario.requests()


def test_placement_of_a_uniform_layout():
    doc = base(cluster={"nodes": [{"name": "n0", "gpu": "h100-sxm", "count": 8}]},
               layout={"kind": "uniform", "tp": 2, "pp": 2, "replicas": 2})
    plan = scenario_from_dict(doc).placement()
    assert [[s.gpus for s in p.stages] for p in plan.pipelines] == [
        [(0, 1), (2, 3)], [(4, 5), (6, 7)]]
    assert [(s.first_layer, s.num_layers) for s in plan.pipelines[0].stages] == [(0, 16),
                                                                                (16, 16)]
    assert plan.pipelines[0].micro_batches == 2


def test_hetero_placement_keeps_stage_shapes():
    doc = base(cluster={"nodes": [{"name": "n0", "gpu": "h100-sxm", "count": 4},
                                  {"name": "n1", "gpu": "a100-sxm-80g", "count": 2}]},
               layout={"kind": "hetero", "pipelines": [{"stages": [
                   {"gpus": [0, 1, 2, 3], "layers": 20}, {"gpus": [4, 5], "layers": 12}]}]})
    stages = scenario_from_dict(doc).placement().pipelines[0].stages
    assert [(s.tp, s.leader, s.num_layers) for s in stages] == [(4, 0, 20), (2, 4, 12)]


# ---- bad -------------------------------------------------------------------------------
BAD = [
    ("unknown top-level key", base(colour="red"), "colour: unknown key"),
    ("unknown model key", base(model={"preset": "llama-3-8b", "layerz": 3}), "model"),
    ("unknown layout key", base(layout={"kind": "uniform", "tp": 2, "tpp": 1}),
     "layout.tpp: unknown key"),
    ("missing cluster", {"model": "tiny", "layout": {"kind": "uniform"}}, "cluster"),
    ("unknown preset", base(model="llama-9"), "model.preset"),
    ("tp does not divide heads", base(layout={"kind": "uniform", "tp": 3}), "layout.tp"),
    ("tp does not divide ffn", base(model={"preset": "tiny", "ffn_hidden": 129},
                                    layout={"kind": "uniform", "tp": 2}), "layout.tp"),
    ("GPU the cluster lacks", base(layout={"kind": "uniform", "tp": 2, "gpus": [0, 5]}),
     "layout.gpus"),
    ("GPU named twice", base(layout={"kind": "uniform", "tp": 2, "gpus": [1, 1]}),
     "layout.gpus"),
    ("layout larger than cluster", base(layout={"kind": "uniform", "tp": 2, "pp": 2}),
     "layout"),
    ("unknown layout kind", base(layout={"kind": "ring"}), "layout"),
    ("length range upside down",
     base(workload={"prompt_tokens": {"dist": "uniform", "min": 9, "max": 3}}),
     "workload.prompt_tokens"),
    ("negative rate", base(workload={"arrival": {"kind": "poisson", "rate_per_s": -1}}),
     "workload.arrival.rate_per_s"),
    ("bad memory utilization", base(scheduler={"gpu_memory_utilization": 1.5}),
     "scheduler.gpu_memory_utilization"),
    ("node named twice", base(cluster={"nodes": [{"name": "a", "gpu": "h100-sxm", "count": 1},
                                                 {"name": "a", "gpu": "h100-sxm", "count": 1}]}),
     "cluster"),
    ("hetero layers do not add up",
     base(layout={"kind": "hetero", "pipelines": [{"stages": [{"gpus": [0], "layers": 3}]}]}),
     "layout.pipelines.0.stages"),
]


@pytest.mark.parametrize(("why", "doc", "field"), BAD, ids=[b[0] for b in BAD])
def test_bad_scenarios_name_the_field(why, doc, field):
    with pytest.raises(SpecError) as err:
        scenario_from_dict(doc).requests()
    message = str(err.value)
    assert field in message, (why, message)
    assert "\n" not in message


def test_malformed_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: tiny\ncluster: {nodes: [\n  layout: x\n")
    with pytest.raises(SpecError, match="malformed YAML at line"):
        load_scenario(path)


def test_missing_trace_file(tmp_path):
    doc = base(workload={"arrival": {"kind": "trace", "path": "nope.csv"}})
    with pytest.raises(SpecError, match="workload.arrival.path"):
        scenario_from_dict(doc, base_dir=tmp_path).requests()


def test_trace_file_is_read_in_arrival_order(tmp_path):
    (tmp_path / "t.csv").write_text("arrival_s,prompt_tokens,output_tokens\n"
                                    "0.5,10,2\n0.1,20,3\n")
    doc = base(workload={"requests": 10, "arrival": {"kind": "trace", "path": "t.csv"}})
    reqs = scenario_from_dict(doc, base_dir=tmp_path).requests()
    assert [(r.rid, r.arrival_s, r.prompt_tokens) for r in reqs] == [(0, 0.1, 20), (1, 0.5, 10)]
