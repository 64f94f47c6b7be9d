"""The closed-form fast path agrees with the SimPy engine where nothing queues."""

from __future__ import annotations

import pytest

from twinfer.sim import simulate
from twinfer.sim.fast import estimate
from twinfer.spec import scenario_from_dict

LAYOUTS = [
    ({"kind": "uniform", "tp": 2}, 1, 8),
    ({"kind": "uniform", "tp": 1, "replicas": 4}, 1, 16),
    ({"kind": "uniform", "tp": 2, "pp": 2}, 1, 8),
    ({"kind": "uniform", "tp": 2, "pp": 4}, 1, 32),
    ({"kind": "uniform", "tp": 8, "pp": 2}, 2, 16),
]


@pytest.mark.parametrize(("layout", "nodes", "requests"), LAYOUTS,
                         ids=lambda v: str(v) if isinstance(v, dict) else None)
def test_fast_path_agrees_within_one_percent(layout, nodes, requests):
    # identical requests arriving together, all fitting in one prefill step per lane
    s = scenario_from_dict({
        "model": "llama-3-8b",
        "cluster": {"nodes": [{"name": f"n{i}", "gpu": "h100-sxm", "count": 8}
                              for i in range(nodes)],
                    "links": {"nvlink": {"bw_gbps": 296, "latency_us": 27},
                              "infiniband": {"bw_gbps": 45, "latency_us": 10}}},
        "layout": layout,
        "workload": {"requests": requests, "prompt_tokens": 512, "output_tokens": 96}})
    engine, fast = simulate(s), estimate(s)
    assert fast.engine == "fast" and engine.engine == "simpy"
    for metric in ("ttft_s", "tpot_s", "e2e_s"):
        assert getattr(fast, metric).mean == pytest.approx(getattr(engine, metric).mean,
                                                           rel=0.01), metric
    assert fast.tps == pytest.approx(engine.tps, rel=0.01)
    assert fast.makespan_s == pytest.approx(engine.makespan_s, rel=0.01)


def test_fast_path_under_poisson_is_close_and_warns_when_overloaded():
    doc = {"model": "llama-3-8b", "cluster": {"nodes": [{"gpu": "h200-sxm", "count": 2}]},
           "layout": {"kind": "uniform", "tp": 2},
           "workload": {"requests": 200, "prompt_tokens": 1024, "output_tokens": 128,
                        "arrival": {"kind": "poisson", "rate_per_s": 4}}}
    s = scenario_from_dict(doc)
    engine, fast = simulate(s), estimate(s)
    assert fast.tpot_s.mean == pytest.approx(engine.tpot_s.mean, rel=0.15)
    assert fast.tps == pytest.approx(engine.tps, rel=0.15)
    doc["workload"]["arrival"]["rate_per_s"] = 10_000
    doc["scheduler"] = {"max_running": 4}
    assert any("exceed" in w for w in estimate(scenario_from_dict(doc)).warnings)
