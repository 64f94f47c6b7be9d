"""The engine's exact event order on tiny scenarios (SimPy style: assert the log)."""

from __future__ import annotations

from twinfer.sim.engine import Engine
from twinfer.sim.stage import PipelineModel, StepBatch
from twinfer.spec import Request, SchedulerSpec


class FixedPipeline(PipelineModel):
    """Stages that take 1.0 s for a step with prompt tokens, 0.5 s for a decode-only
    step, and sends of 0.25 s: times a reader can follow."""

    def __init__(self, stages: int, micro_batches: int) -> None:
        super().__init__(stages=[None] * stages, hops=[None] * (stages - 1),
                         gpus=[(s,) for s in range(stages)], micro_batches=micro_batches)

    def step(self, batch: StepBatch):
        t = 1.0 if batch.prefill_tokens else 0.5
        n = len(self.stages)
        return [t] * n, [0.0] * n, [0.25] * (n - 1)


def run(pipeline, requests, **sched):
    log: list = []
    engine = Engine([pipeline], [1000], requests, SchedulerSpec(**sched), log=log)
    return engine.run(), log


def test_continuous_batching_event_order():
    # r0 arrives at 0 (4 prompt, 3 output tokens); r1 at 0.25 (4 prompt, 2 output).
    # As the executor schedules (vLLM without chunked prefill): a step is a prefill or
    # a decode, prefill first, so r1's prefill runs while r0 waits for its second
    # token; then both decode together and r1 finishes first.
    reqs = [Request(0, 0.0, 4, 3), Request(1, 0.25, 4, 2)]
    record, log = run(FixedPipeline(1, 1), reqs)
    assert log == [
        (0.0, "arrive", 0, 0, 0),
        (0.0, "step", 0, 0, 0, 4),  # (pipeline, lane, decodes, prompt tokens)
        (0.0, "stage_start", 0, 0, 0),
        (0.25, "arrive", 1, 0, 0),
        (1.0, "stage_end", 0, 0, 0),
        (1.0, "first_token", 0),
        (1.0, "step", 0, 0, 0, 4),
        (1.0, "stage_start", 0, 0, 0),
        (2.0, "stage_end", 0, 0, 0),
        (2.0, "first_token", 1),
        (2.0, "step", 0, 0, 2, 0),
        (2.0, "stage_start", 0, 0, 0),
        (2.5, "stage_end", 0, 0, 0),
        (2.5, "finish", 1, 2),
        (2.5, "step", 0, 0, 1, 0),
        (2.5, "stage_start", 0, 0, 0),
        (3.0, "stage_end", 0, 0, 0),
        (3.0, "finish", 0, 3),
    ]
    assert record.tokens == [3, 2] and record.tokens_emitted == 5


def test_whole_prompts_packed_within_the_budget_and_kv_wait():
    # no chunking: a 6-token prompt over a 4-token budget runs alone; the next one
    # (3 tokens) would overflow the budget, so it takes the next step
    record, log = run(FixedPipeline(1, 1), [Request(0, 0.0, 6, 1), Request(1, 0.0, 3, 2)],
                      max_prefill_tokens=4)
    assert [e for e in log if e[1] in ("step", "first_token", "finish")] == [
        (0.0, "step", 0, 0, 0, 6), (1.0, "first_token", 0), (1.0, "finish", 0, 1),
        (1.0, "step", 0, 0, 0, 3), (2.0, "first_token", 1), (2.0, "step", 0, 0, 1, 0),
        (2.5, "finish", 1, 2)]
    # 2 pages of 4 tokens, one kept free at admission (the watermark): r1 waits for r0
    log: list = []
    Engine([FixedPipeline(1, 1)], [2], [Request(0, 0.0, 4, 2), Request(1, 0.0, 4, 2)],
           SchedulerSpec(kv_block_tokens=4), log=log).run()
    assert [e for e in log if e[1] in ("step", "finish")] == [
        (0.0, "step", 0, 0, 0, 4), (1.0, "step", 0, 0, 1, 0), (1.5, "finish", 0, 2),
        (1.5, "step", 0, 0, 0, 4), (2.5, "step", 0, 0, 1, 0), (3.0, "finish", 1, 2)]


def test_decode_preempts_the_latest_admitted_by_recomputation():
    # 3 pages of 4 tokens: both 4-token prompts are admitted (1 page each, 1 left);
    # their first decode writes token 5, a second page each: r0 (admitted first) takes
    # the last page, r1 is preempted, later re-prefills its prompt and its one token
    # (5 tokens, emitting its second token) and decodes the rest
    log: list = []
    engine = Engine([FixedPipeline(1, 1)], [3], [Request(0, 0.0, 4, 6), Request(1, 0.0, 4, 6)],
                    SchedulerSpec(kv_block_tokens=4), log=log)
    record = engine.run()
    assert [e for e in log if e[1] in ("step", "first_token", "finish")] == [
        (0.0, "step", 0, 0, 0, 8), (1.0, "first_token", 0), (1.0, "first_token", 1),
        *[(1.0 + 0.5 * i, "step", 0, 0, 1, 0) for i in range(5)], (3.5, "finish", 0, 6),
        (3.5, "step", 0, 0, 0, 5), *[(4.5 + 0.5 * i, "step", 0, 0, 1, 0) for i in range(4)],
        (6.5, "finish", 1, 6)]
    assert record.tokens == [6, 6] and record.kv_peak_blocks == [3]
    assert engine.lanes[0][0].preemptions == 1


def test_pipeline_keeps_two_micro_batches_in_flight():
    # two stages, two lanes: while lane 0 is on stage 1, lane 1 uses stage 0
    reqs = [Request(0, 0.0, 4, 2), Request(1, 0.0, 4, 2)]
    record, log = run(FixedPipeline(2, 2), reqs)
    stage_log = [e for e in log if e[1] in ("stage_start", "stage_end", "sent")]
    assert stage_log == [
        (0.0, "stage_start", 0, 0, 0),
        (1.0, "stage_end", 0, 0, 0),
        (1.0, "stage_start", 0, 0, 1),  # lane 1 waited for stage 0
        (1.25, "sent", 0, 0, 0),
        (1.25, "stage_start", 0, 1, 0),
        (2.0, "stage_end", 0, 0, 1),
        (2.25, "stage_end", 0, 1, 0),
        (2.25, "sent", 0, 0, 1),
        (2.25, "stage_start", 0, 0, 0),  # lane 0's decode step
        (2.25, "stage_start", 0, 1, 1),
        (2.75, "stage_end", 0, 0, 0),
        (3.0, "sent", 0, 0, 0),
        (3.25, "stage_end", 0, 1, 1),
        (3.25, "stage_start", 0, 0, 1),
        (3.25, "stage_start", 0, 1, 0),
        (3.75, "stage_end", 0, 0, 1),
        (3.75, "stage_end", 0, 1, 0),
        (4.0, "sent", 0, 0, 1),
        (4.0, "stage_start", 0, 1, 1),
        (4.5, "stage_end", 0, 1, 1),
    ]
    assert record.finish_s == [3.75, 4.5]
