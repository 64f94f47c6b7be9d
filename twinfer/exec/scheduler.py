"""Iteration-level continuous batching (Orca, OSDI 2022; vLLM's scheduler), on the driver.

Requests arrive (by wall clock, or all at once), wait, are prefilled in packed batches
of at most ``max_prefill_tokens`` prompt tokens, then decode one token per step with
whatever else is running; a finished sequence frees its pages at once and a waiting
one takes its place at the next step. A step is either a prefill or a decode (new
requests prefill between decode steps), and prefill goes first when it fits.

With pipeline parallelism the running sequences are split into ``micro_batches``
groups (vLLM's "virtual engines"): each group has at most one step in flight, so up to
``micro_batches`` steps flow through the stages at once.

Pages are reserved for the whole context a step writes. When a decode step finds no
free page, the group's most recently admitted sequence is preempted by recomputation
(its pages freed; it re-enters the queue at the front with its generated tokens
appended to its prompt). Pure Python: no torch, so it is tested on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import ceil

import numpy as np

from twinfer.exec.kv_cache import BlockAllocator, slot_of


@dataclass(eq=False)
class Sequence:
    """One request as the driver tracks it. Times are seconds since the run started.

    Compared by identity (``eq=False``): the scheduler tests membership and removes
    sequences from lists every step, and a field-by-field ``__eq__`` made that host
    time grow with the square of the batch (1.6 ms a decode step at batch 64 on the
    CPU of this project's dev machine; the H100 runs showed 2.7 ms of such host time).
    """

    rid: int
    arrival_s: float
    prompt: list[int]
    max_new: int
    out: list[int] = field(default_factory=list)
    blocks: list[int] = field(default_factory=list)
    token_s: list[float] = field(default_factory=list)
    group: int = -1
    preemptions: int = 0

    @property
    def context(self) -> int:
        return len(self.prompt) + len(self.out)

    @property
    def done(self) -> bool:
        return len(self.out) >= self.max_new


@dataclass(frozen=True)
class BatchingConfig:
    max_running: int
    max_prefill_tokens: int
    page_size: int
    micro_batches: int
    max_blocks: int  # block-table width: pages of the longest sequence of the run


@dataclass
class Plan:
    """One step of one micro-batch: all the ranks need to run it (numpy, picklable).

    Prefill: ``cu_seqlens`` int32 [n + 1] bounds the packed prompts. Decode:
    ``block_table`` int32 [n, max_blocks] and ``seq_lens`` int32 [n] (context after
    this token). ``tokens``, ``positions``, ``slots``: int64 [tokens].
    """

    step: int
    group: int
    phase: str  # "prefill" | "decode"
    rids: list[int]
    tokens: np.ndarray
    positions: np.ndarray
    slots: np.ndarray
    cu_seqlens: np.ndarray | None = None
    block_table: np.ndarray | None = None
    seq_lens: np.ndarray | None = None

    @property
    def batch(self) -> int:
        return len(self.rids)

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    @property
    def context_tokens(self) -> int:
        """KV tokens attended over in this step (sum of the sequences' contexts)."""
        if self.phase == "decode":
            return int(self.seq_lens.sum())
        return int(self.cu_seqlens[-1])


class Scheduler:
    """Decides every step of one pipeline; `complete` feeds back the sampled tokens."""

    def __init__(self, seqs: list[Sequence], cfg: BatchingConfig,
                 allocator: BlockAllocator) -> None:
        self.cfg, self.alloc = cfg, allocator
        self.seqs = {s.rid: s for s in seqs}
        self.pending = sorted(seqs, key=lambda s: (s.arrival_s, s.rid))  # not yet arrived
        self.waiting: list[Sequence] = []
        self.running: list[list[Sequence]] = [[] for _ in range(cfg.micro_batches)]
        self.busy = [False] * cfg.micro_batches
        self.finished: list[Sequence] = []
        self.steps = 0
        # vLLM's watermark: keep a few pages free at admission so decode rarely preempts
        self.watermark = max(1, allocator.num_blocks // 100)

    # ---- state ---------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return not (self.pending or self.waiting or any(self.running))

    @property
    def in_flight(self) -> bool:
        return any(self.busy)

    def next_arrival_s(self) -> float | None:
        return self.pending[0].arrival_s if self.pending else None

    def pages_needed(self, tokens: int) -> int:
        return ceil(tokens / self.cfg.page_size)

    # ---- planning ------------------------------------------------------------------
    def next_plan(self, now_s: float) -> Plan | None:
        """The next step for some idle micro-batch group, or None if none can start."""
        while self.pending and self.pending[0].arrival_s <= now_s:
            self.waiting.append(self.pending.pop(0))
        idle = [g for g in range(self.cfg.micro_batches) if not self.busy[g]]
        if not idle:
            return None
        lightest = min(idle, key=lambda g: len(self.running[g]))
        plan = self._prefill(lightest)
        for g in idle:
            if plan is None:
                plan = self._decode(g)
        if plan is not None:
            self.busy[plan.group] = True
            self.steps += 1
        return plan

    def _prefill(self, group: int) -> Plan | None:
        running = sum(len(r) for r in self.running)
        # balance the groups: each takes its share of what is running or waiting
        share = ceil((running + len(self.waiting)) / self.cfg.micro_batches)
        cap = max(1, share - len(self.running[group]))
        batch, tokens = [], 0
        for seq in self.waiting:
            n = seq.context
            if batch and (tokens + n > self.cfg.max_prefill_tokens or len(batch) >= cap):
                break
            if running + len(batch) >= self.cfg.max_running:
                break
            need = self.pages_needed(n)
            if need > self.alloc.free - self.watermark:
                break
            seq.blocks = self.alloc.allocate(need)
            batch.append(seq)
            tokens += n
        if not batch:
            return None
        del self.waiting[:len(batch)]
        for seq in batch:
            seq.group = group
        self.running[group] += batch
        ids = [np.asarray(s.prompt + s.out, dtype=np.int64) for s in batch]
        positions = np.concatenate([np.arange(len(x), dtype=np.int64) for x in ids])
        slots = np.concatenate([self._slots(s, 0, s.context) for s in batch])
        cu = np.concatenate([[0], np.cumsum([len(x) for x in ids])]).astype(np.int32)
        return Plan(self.steps, group, "prefill", [s.rid for s in batch],
                    np.concatenate(ids), positions, slots, cu_seqlens=cu)

    def _decode(self, group: int) -> Plan | None:
        seqs = self.running[group]
        for seq in list(seqs):
            if seq.group != group:  # preempted below while making room for an older one
                continue
            need = self.pages_needed(seq.context) - len(seq.blocks)
            while need > self.alloc.free and seq.group == group:
                self._preempt(seqs[-1])
            if seq.group == group and need > 0:
                seq.blocks += self.alloc.allocate(need)
        if not seqs:
            return None
        n = len(seqs)
        table = np.zeros((n, self.cfg.max_blocks), dtype=np.int32)
        for i, s in enumerate(seqs):
            table[i, :len(s.blocks)] = s.blocks
        positions = np.array([s.context - 1 for s in seqs], dtype=np.int64)
        ps = self.cfg.page_size
        slots = np.array([slot_of(s.blocks, s.context - 1, ps) for s in seqs], dtype=np.int64)
        return Plan(self.steps, group, "decode", [s.rid for s in seqs],
                    np.array([s.out[-1] for s in seqs], dtype=np.int64), positions, slots,
                    block_table=table,
                    seq_lens=np.array([s.context for s in seqs], dtype=np.int32))

    def _slots(self, seq: Sequence, start: int, stop: int) -> np.ndarray:
        """KV slots of positions ``start .. stop - 1`` (``slot_of`` over an array: a
        Python loop per token cost 4-6 ms of host time before a 32K prompt's prefill)."""
        ps = self.cfg.page_size
        pos = np.arange(start, stop, dtype=np.int64)
        return np.asarray(seq.blocks, dtype=np.int64)[pos // ps] * ps + pos % ps

    def _preempt(self, seq: Sequence) -> None:
        """Recompute preemption: free the pages, requeue at the front."""
        self.running[seq.group].remove(seq)
        self.alloc.release(seq.blocks)
        seq.blocks, seq.group = [], -1
        seq.preemptions += 1
        self.waiting.insert(0, seq)

    # ---- feedback ------------------------------------------------------------------
    def complete(self, plan: Plan, tokens: list[int], now_s: float) -> list[Sequence]:
        """Record the tokens sampled by ``plan``; returns the sequences it finished."""
        self.busy[plan.group] = False
        done = []
        for rid, token in zip(plan.rids, tokens, strict=True):
            seq = self.seqs[rid]
            seq.out.append(int(token))
            seq.token_s.append(now_s)
            if seq.done:
                self.running[seq.group].remove(seq)
                self.alloc.release(seq.blocks)
                seq.blocks = []
                done.append(seq)
        self.finished += done
        return done

    def kv_usage(self) -> tuple[int, int]:
        """(tokens the held pages are for, pages held): their ratio is the internal
        fragmentation of the last page of each sequence."""
        seqs = [s for group in self.running for s in group]
        ps = self.cfg.page_size
        return (sum(min(s.context, len(s.blocks) * ps) for s in seqs),
                sum(len(s.blocks) for s in seqs))
