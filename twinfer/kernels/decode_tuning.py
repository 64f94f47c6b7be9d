"""Launch configuration of the decode kernels: stage-1 tiles and the KV-split count.

Both were chosen from sweeps on an H200 (``python -m twinfer.kernels.bench --sweep``;
figures in docs/BENCHMARKS.md) and are plain functions of the shapes, so a caller (the
benchmark, the calibration) can override them per call.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from twinfer.kernels.backend import interpreting


@dataclass(frozen=True)
class DecodeTiles:
    """Launch configuration of stage 1 (exposed so the benchmark can sweep it)."""

    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 3


def default_tiles(head_dim: int, block_m: int, paged: bool) -> DecodeTiles:
    """Tiles measured best on an H200 (docs/BENCHMARKS.md); small under the interpreter,
    where every tile costs Python time. Paged K/V rows are gathered through the block
    table, which Triton's pipeliner cannot prefetch as deeply as a contiguous stream,
    so the paged kernel moves more bytes per tile instead."""
    if interpreting():
        return DecodeTiles(block_n=16, num_warps=1, num_stages=1)
    if block_m > 64 or head_dim > 128:
        return DecodeTiles(block_n=32, num_warps=4, num_stages=3)
    if paged:
        return DecodeTiles(block_n=128, num_warps=4, num_stages=3)
    return DecodeTiles(block_n=64, num_warps=4, num_stages=3)


@functools.lru_cache(maxsize=1024)
def choose_num_splits(
    batch: int, kv_heads: int, context: int, sms: int, block_n: int = 64,
    ctas_per_sm: int = 3, max_splits: int = 64,
) -> int:
    """Number of KV splits for stage 1.

    Stage 1 runs ``n = batch * kv_heads * splits`` programs, of which about
    ``sms * ctas_per_sm`` are resident at once (shared memory allows 3 per H200 SM).
    Model, fitted to the H200 split sweep in docs/BENCHMARKS.md: a single wave
    saturates HBM once it holds about 2 programs per SM; beyond one wave, a partly
    filled last wave leaves bandwidth unused. So the efficiency of a split count is
    ``min(1, n / (2 * sms))`` when ``n`` fits in one wave, else ``n / (waves * slots)``.
    Take the fewest splits within 95% of the best; every split is at least one tile.
    The last split of a (sequence, KV head) merges the others serially, so more than
    16 splits are allowed only while each keeps at least 1K tokens to stream. In the
    H200 sweep, batch-1 GQA at 8K ran 18 us with 16 splits and 21 with 30 (at 32K,
    45 / 46.5 us); inside the executor's decode graph on three H100s, batch 1 at 32K
    ran 9-25% faster with 32 splits than with 16 (4K: 16 best; docs/BENCHMARKS.md,
    "Decode attention as swept and as the executor runs it").
    """
    programs = batch * kv_heads
    slots = sms * ctas_per_sm
    cap = max(1, min(max_splits, context // block_n, max(16, context // 1024)))

    def efficiency(splits: int) -> float:
        n = programs * splits
        if n <= slots:
            return min(1.0, n / (2 * sms))
        return n / (math.ceil(n / slots) * slots)

    scores = [efficiency(s) for s in range(1, cap + 1)]
    best = max(scores)
    return next(s for s, score in enumerate(scores, 1) if score >= 0.95 * best)
