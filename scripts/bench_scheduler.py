"""Host time of the executor's scheduler: per decode step against batch size, and per
prefill plan against prompt length.

CPU only, no model. Decode: every sequence has a 512-token prompt, is prefilled once,
then 200 decode steps are planned and completed; the median per step is printed.
Prefill: the plan of one prompt of 512 to 32K tokens (token ids, positions, KV slots),
the median of 9. `python scripts/bench_scheduler.py`. Recorded in docs/BENCHMARKS.md.
"""

import statistics
import time

from twinfer.exec.kv_cache import BlockAllocator
from twinfer.exec.scheduler import BatchingConfig, Scheduler, Sequence

STEPS = 200

for batch in (1, 4, 16, 64, 256):
    seqs = [Sequence(rid=i, arrival_s=0.0, prompt=list(range(512)), max_new=10_000)
            for i in range(batch)]
    cfg = BatchingConfig(max_running=512, max_prefill_tokens=1 << 20, page_size=16,
                         micro_batches=1, max_blocks=2048)
    sched = Scheduler(seqs, cfg, BlockAllocator(200_000))
    plan = sched.next_plan(0.0)  # one prefill step for every sequence
    sched.complete(plan, [1] * batch, 0.0)
    times = []
    for _ in range(STEPS):
        t0 = time.perf_counter()
        plan = sched.next_plan(0.0)
        sched.complete(plan, [1] * batch, 0.0)
        times.append(time.perf_counter() - t0)
    times.sort()
    print(f"batch {batch:4d}: median {times[STEPS // 2] * 1e6:8.1f} us per decode step "
          "(plan + complete)")


def prefill_plan_s(tokens: int) -> float:
    cfg = BatchingConfig(max_running=4, max_prefill_tokens=tokens, page_size=16,
                         micro_batches=1, max_blocks=tokens // 16 + 2)
    sched = Scheduler([Sequence(rid=0, arrival_s=0.0, prompt=list(range(tokens)),
                                max_new=4)], cfg, BlockAllocator(tokens // 16 + 64))
    t0 = time.perf_counter()
    sched.next_plan(0.0)
    return time.perf_counter() - t0


for tokens in (512, 4096, 8192, 32768):
    median = statistics.median(prefill_plan_s(tokens) for _ in range(9))
    print(f"prompt {tokens:6d} tokens: median {median * 1e6:8.1f} us per prefill plan")
