"""Continuous batching on the driver, as exact logs of the plans it issues."""

from __future__ import annotations

from twinfer.exec.kv_cache import BlockAllocator
from twinfer.exec.scheduler import BatchingConfig, Scheduler, Sequence


def cfg(**kw: int) -> BatchingConfig:
    base = dict(max_running=4, max_prefill_tokens=8, page_size=4, micro_batches=1,
                max_blocks=8)
    return BatchingConfig(**{**base, **kw})


def seq(rid: int, prompt: int, out: int, arrival_s: float = 0.0) -> Sequence:
    return Sequence(rid, arrival_s, list(range(10 * rid, 10 * rid + prompt)), out)


def drive(sched: Scheduler, now_s: float = 0.0) -> list[tuple[str, list[int]]]:
    """Run to completion one plan at a time; sampled token = 1000 + step."""
    log = []
    while not sched.done:
        plan = sched.next_plan(now_s)
        assert plan is not None, "stalled"
        log.append((plan.phase, plan.rids))
        sched.complete(plan, [1000 + plan.step] * plan.batch, now_s)
    return log


def test_prefill_packs_up_to_the_token_budget_then_decodes_together():
    alloc = BlockAllocator(20)
    sched = Scheduler([seq(0, 5, 2), seq(1, 3, 1), seq(2, 9, 3)], cfg(), alloc)
    first = sched.next_plan(0.0)
    assert (first.phase, first.rids, first.cu_seqlens.tolist()) == ("prefill", [0, 1], [0, 5, 8])
    assert first.positions.tolist() == [0, 1, 2, 3, 4, 0, 1, 2]
    assert first.slots.tolist() == [0, 1, 2, 3, 4, 8, 9, 10]  # pages [0, 1] and [2]
    sched.complete(first, [100, 101], 0.0)  # request 1 wanted one token: done, page 2 freed
    second = sched.next_plan(0.0)
    assert (second.phase, second.rids) == ("prefill", [2])  # alone over budget: allowed
    assert sched.seqs[2].blocks == [2, 3, 4]
    sched.complete(second, [102], 0.0)
    third = sched.next_plan(0.0)
    assert (third.phase, third.rids) == ("decode", [0, 2])
    assert third.tokens.tolist() == [100, 102]
    assert third.positions.tolist() == [5, 9] and third.seq_lens.tolist() == [6, 10]
    assert third.slots.tolist() == [1 * 4 + 1, 4 * 4 + 1]
    assert third.block_table.tolist() == [[0, 1, 0, 0, 0, 0, 0, 0], [2, 3, 4, 0, 0, 0, 0, 0]]
    sched.complete(third, [103, 104], 0.0)
    assert drive(sched) == [("decode", [2])]
    assert [s.out for s in sorted(sched.finished, key=lambda s: s.rid)] == [
        [100, 103], [101], [102, 104, 1003]]
    assert alloc.free == 20


def test_micro_batch_groups_split_the_work_and_keep_one_step_each_in_flight():
    sched = Scheduler([seq(i, 4, 2) for i in range(4)], cfg(micro_batches=2, max_prefill_tokens=64),
                      BlockAllocator(20))
    a = sched.next_plan(0.0)
    b = sched.next_plan(0.0)
    assert (a.group, a.phase, a.rids) == (0, "prefill", [0, 1])
    assert (b.group, b.phase, b.rids) == (1, "prefill", [2, 3])
    assert sched.next_plan(0.0) is None  # both groups busy
    sched.complete(a, [7, 7], 0.0)
    c = sched.next_plan(0.0)
    assert (c.group, c.phase, c.rids) == (0, "decode", [0, 1])
    assert sched.next_plan(0.0) is None


def test_out_of_pages_preempts_the_newest_and_recomputes_it_later():
    alloc = BlockAllocator(4)  # watermark: 1 page kept free at admission
    sched = Scheduler([seq(0, 4, 6), seq(1, 4, 6)], cfg(), alloc)
    log = drive(sched)
    assert log == [
        ("prefill", [0, 1]),  # one page each
        ("decode", [0, 1]), ("decode", [0, 1]), ("decode", [0, 1]), ("decode", [0, 1]),
        ("decode", [0]),  # request 0 needs a 3rd page: request 1 is preempted
        ("prefill", [1]),  # recomputed: prompt + its 5 tokens, once request 0 is done
    ]
    assert sched.seqs[1].preemptions == 1
    assert [len(s.out) for s in sched.seqs.values()] == [6, 6]
    assert alloc.free == 4 and alloc.peak_used == 4


def test_requests_wait_for_their_arrival_time():
    sched = Scheduler([seq(0, 4, 2, 0.0), seq(1, 4, 2, 5.0)], cfg(), BlockAllocator(20))
    plan = sched.next_plan(1.0)
    assert plan.rids == [0]
    sched.complete(plan, [1], 1.0)
    assert sched.next_arrival_s() == 5.0
    assert sched.next_plan(1.0).phase == "decode"


def test_sequences_compare_by_identity():
    """Membership tests in the scheduler's per-step loops stay O(1) per comparison: two
    sequences with equal fields are still two sequences."""
    a = Sequence(rid=0, arrival_s=0.0, prompt=[1, 2, 3], max_new=4)
    b = Sequence(rid=0, arrival_s=0.0, prompt=[1, 2, 3], max_new=4)
    assert a != b
    assert a in [a] and b not in [a]


def test_a_prompt_over_scattered_pages_gets_each_positions_own_slot():
    """Pages freed out of order leave a prompt non-contiguous: every position's slot is
    its page's start plus its row (``slot_of``), however many pages it spans."""
    from twinfer.exec.kv_cache import slot_of

    alloc = BlockAllocator(16)
    held = alloc.allocate(16)
    alloc.release([held[i] for i in (9, 2, 14, 7, 4, 0, 11, 5)])  # a scattered free list
    sched = Scheduler([seq(0, 17, 1)], cfg(max_prefill_tokens=64, max_blocks=8), alloc)
    plan = sched.next_plan(0.0)
    assert plan is not None and plan.phase == "prefill"
    blocks = sched.seqs[0].blocks
    assert len(blocks) == 5 and blocks != sorted(blocks)
    assert plan.slots.tolist() == [slot_of(blocks, p, 4) for p in range(17)]
