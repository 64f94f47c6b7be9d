"""The layout search: its space, its ranking, its Pareto front, its outputs."""

from __future__ import annotations

import pytest
import yaml

from twinfer.sim.candidates import (
    GpuType,
    SearchSpace,
    enumerate_layouts,
    proportional_layers,
)
from twinfer.sim.search import (
    Candidate,
    SearchOptions,
    on_cluster,
    pareto_front,
    parse_gpus,
    score,
    search,
)
from twinfer.sim.search_report import layout_summary, parse_slo, write_chosen
from twinfer.spec import ClusterSpec, NodeSpec, SpecError, load_scenario, model_preset

GIB = 1 << 30
TYPES = {"fast": GpuType("fast", 4e12, 141 * GIB), "slow": GpuType("slow", 2e12, 80 * GIB)}


def test_proportional_layers():
    assert proportional_layers(80, [4.0, 2.0]) == [53, 27]
    assert proportional_layers(32, [1.0, 1.0, 1.0]) == [11, 11, 10]
    assert proportional_layers(4, [100.0, 1.0]) == [3, 1]  # every stage keeps a layer
    assert sum(proportional_layers(81, [3.0, 2.0, 2.0])) == 81


def test_space_of_a_small_mixed_cluster():
    cluster = ClusterSpec(nodes=[NodeSpec(name="a", gpu="fast", count=2),
                                 NodeSpec(name="b", gpu="slow", count=2)])
    layouts = enumerate_layouts(model_preset("llama-3-8b"), cluster, TYPES,
                                SearchSpace(kinds=("uniform", "hetero")))
    kinds = [lay.kind for lay in layouts]
    assert len({lay.model_dump_json() for lay in layouts}) == len(layouts)  # no duplicates
    uniform = {(lay.tp, lay.pp, lay.replicas, tuple(lay.gpus)) for lay in layouts
               if lay.kind == "uniform"}
    # on all four (id order): TP groups never mix the two types
    assert (2, 1, 2, (0, 1, 2, 3)) in uniform and (4, 1, 1, (0, 1, 2, 3)) not in uniform
    assert (1, 1, 2, (2, 3)) in uniform  # the slow pair alone
    chains = [lay for lay in layouts if lay.kind == "hetero" and len(lay.pipelines) == 1
              and len(lay.pipelines[0].stages) == 2
              and [len(s.gpus) for s in lay.pipelines[0].stages] == [2, 2]]
    # fast TP=2 then slow TP=2: 32 layers by speed 2:1 (21 / 11), then one moved each way
    assert sorted([s.layers for s in lay.pipelines[0].stages] for lay in chains) == [
        [20, 12], [21, 11], [22, 10]]
    assert kinds.count("hetero") > 10


def test_layouts_that_cannot_hold_the_weights_are_dropped():
    model = model_preset("llama-2-70b")  # 138 GB of bf16 weights
    one = ClusterSpec(nodes=[NodeSpec(name="a", gpu="slow", count=1)])
    assert enumerate_layouts(model, one, TYPES, SearchSpace(kinds=("uniform",))) == []
    two = ClusterSpec(nodes=[NodeSpec(name="a", gpu="slow", count=2)])
    # 69 GB per GPU fits under 90% of 80 GB minus the 2 GB allowance; the twin's
    # memory plan then decides whether any KV cache is left
    assert {(lay.tp, lay.pp) for lay in enumerate_layouts(
        model, two, TYPES, SearchSpace(kinds=("uniform",)))} == {(2, 1), (1, 2)}


def _cand(i, tpot, tps, gpus):
    return Candidate(i, {"kind": "uniform"}, "uniform", gpus, tpot, 0.1, tps)


def test_pareto_front_and_objectives():
    a, b, c, d = (_cand(0, 0.010, 100, 2), _cand(1, 0.005, 150, 4), _cand(2, 0.006, 140, 4),
                  _cand(3, 0.010, 100, 2))
    assert pareto_front([a, b, c, d]) == [a, d, b]  # c is beaten by b; a and d tie
    assert min([a, b, c], key=lambda x: score(x, "tpot")) is b
    assert min([a, b, c], key=lambda x: score(x, "cost")) is a  # 50 tokens/s per GPU
    assert min([a, b, c], key=lambda x: score(x, "tps")) is b


def test_parse_gpus_and_slo():
    cluster = parse_gpus("h100-sxm:12,a100-sxm-80g:2")
    assert [(n.gpu, n.count) for n in cluster.nodes] == [
        ("h100-sxm", 8), ("h100-sxm", 4), ("a100-sxm-80g", 2)]
    assert parse_slo("ttft=0.5,tpot=40ms") == {"ttft": 0.5, "tpot": pytest.approx(0.04)}
    with pytest.raises(SpecError, match="--slo"):
        parse_slo("latency=3")
    with pytest.raises(SpecError, match="--gpus"):
        parse_gpus("h100-sxm")


def test_layout_summary():
    assert layout_summary({"kind": "uniform", "tp": 4, "pp": 2, "replicas": 1}) == "tp4 pp2 x1"
    hetero = {"kind": "hetero", "pipelines": [
        {"stages": [{"gpus": [0, 1], "layers": 20}, {"gpus": [2], "layers": 12}]}]}
    assert layout_summary(hetero) == "[tp2:20L > tp1:12L]"


def test_search_in_process_is_deterministic(tmp_path):
    scenario = on_cluster(load_scenario("mistral7b_tp4"), parse_gpus("h200-sxm:4"))
    opts = SearchOptions(objective="tpot", workers=1, top_k=3)
    first = search(scenario, opts)
    again = search(scenario, opts)
    assert first.chosen == again.chosen
    assert first.enumerated == len(first.evaluated) + len(first.dropped)
    assert len(first.refined) == 3 and all(c.engine == "simpy" for c in first.refined)
    # the lowest TPOT on four H200s is TP=4 (every GPU reads a quarter of the weights)
    assert first.chosen.layout["kind"] in ("uniform", "kv_sharded")
    assert first.chosen.num_gpus == 4
    command = write_chosen(first, tmp_path / "chosen.yaml")
    chosen = load_scenario(tmp_path / "chosen.yaml")
    assert chosen.layout.model_dump(mode="json", exclude_none=True) == first.chosen.layout
    assert yaml.safe_load((tmp_path / "chosen.yaml").read_text())["name"] == "chosen"
    assert command.endswith(f"-np 4 python -m twinfer.exec {tmp_path / 'chosen.yaml'} "
                            "--out results.json")


def test_an_slo_nobody_meets_is_reported():
    scenario = on_cluster(load_scenario("mistral7b_tp4"), parse_gpus("h200-sxm:2"))
    result = search(scenario, SearchOptions(workers=1, top_k=2, slo_tpot_s=1e-6))
    assert not result.slo_met


def test_a_shared_stage_cache_changes_no_prediction():
    from twinfer.sim.fast import estimate

    scenario = on_cluster(load_scenario("hexgen_mixed"), parse_gpus("h200-sxm:4,a100-sxm-80g:8"))
    types = {t: GpuType(t, 1.0, 141 * GIB) for t in ("h200-sxm", "a100-sxm-80g")}
    layouts = enumerate_layouts(scenario.model, scenario.cluster, types,
                                SearchSpace(kinds=("uniform", "hetero")))[::25]
    cache: dict = {}
    for layout in layouts:
        try:
            candidate = scenario.with_layout(layout)
            alone = estimate(candidate)
        except SpecError:
            continue
        shared = estimate(candidate, stage_cache=cache)
        assert (shared.tpot_s, shared.ttft_s, shared.tps) == (alone.tpot_s, alone.ttft_s,
                                                              alone.tps)
    assert len(cache) > 2  # stages and the cost models were shared
