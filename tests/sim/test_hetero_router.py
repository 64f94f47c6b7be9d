"""The router weighs each pipeline's load by its speed (HexGen's heterogeneous pipelines)."""

from __future__ import annotations

from twinfer.sim.engine import Engine, pipeline_speed
from twinfer.sim.fast import _assign
from twinfer.sim.stage import PipelineModel, StepBatch
from twinfer.sim.twin import build_twin
from twinfer.spec import Request, SchedulerSpec, scenario_from_dict


class Timed(PipelineModel):
    """One stage whose every step takes ``step_s``."""

    def __init__(self, step_s: float) -> None:
        super().__init__(stages=[None], hops=[], gpus=[(0,)], micro_batches=1)
        self.step_s = step_s

    def step(self, batch: StepBatch):
        return [self.step_s], [0.0], []


def test_speed_is_reference_tokens_per_second():
    assert pipeline_speed(Timed(0.25)) == 16 / 0.25


def test_a_four_times_faster_pipeline_takes_four_of_five_requests():
    log: list = []
    reqs = [Request(i, 0.0, 4, 2) for i in range(5)]
    Engine([Timed(0.25), Timed(1.0)], [1000, 1000], reqs, SchedulerSpec(), log=log).run()
    # loads over speeds: r3 ties (4/64 = 1/16) and goes to the first pipeline
    assert [e[3] for e in log if e[1] == "arrive"] == [0, 0, 0, 0, 1]


def test_equal_pipelines_alternate():
    log: list = []
    reqs = [Request(i, 0.0, 4, 2) for i in range(4)]
    Engine([Timed(0.5), Timed(0.5)], [1000, 1000], reqs, SchedulerSpec(), log=log).run()
    assert [e[3] for e in log if e[1] == "arrive"] == [0, 1, 0, 1]


def test_fast_path_shares_requests_by_speed():
    sc = scenario_from_dict({
        "model": "llama-2-70b",
        "cluster": {"nodes": [{"name": "a", "gpu": "h200-sxm", "count": 4},
                              {"name": "b", "gpu": "a100-sxm-80g", "count": 8}]},
        "layout": {"kind": "hetero", "pipelines": [
            {"stages": [{"gpus": [0, 1, 2, 3], "layers": 80}]},
            {"stages": [{"gpus": list(range(4, 12)), "layers": 80}]}]},
        "workload": {"requests": 100, "prompt_tokens": 512, "output_tokens": 32,
                     "arrival": {"kind": "poisson", "rate_per_s": 4}},
    })
    twin = build_twin(sc)
    speeds = [pipeline_speed(p) for p in twin.pipelines]
    counts = [sum(len(lane) for lane in pipe) for pipe in _assign(twin)]
    assert sum(counts) == 100 and speeds[0] != speeds[1]
    for count, speed in zip(counts, speeds, strict=True):
        assert abs(count - 100 * speed / sum(speeds)) <= 1
