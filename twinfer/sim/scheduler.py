"""Iteration-level continuous batching: which sequences run in the next step.

Orca (Yu et al., OSDI 2022) schedules per iteration instead of per request; vLLM
(Kwon et al., SOSP 2023) adds a paged KV cache. This scheduler makes the decisions the
executor's (``twinfer.exec.scheduler``, vLLM's v0 policy without chunked prefill)
makes, so that the twin is validated against the schedule that was measured:

- a step is either a **prefill** or a **decode**, and prefill goes first when one fits:
  whole prompts, first come first served, packed while their tokens stay within
  ``max_prefill_tokens`` (a longer prompt runs alone), the running set stays within
  ``max_running`` and the prompt's pages fit in the free pages less a watermark (1% of
  the pool, vLLM's, so that decode rarely preempts). The head of the queue that does
  not fit blocks those behind it. While prompts are admitted, running sequences wait:
  their time between tokens includes those prefill steps;
- a **decode** step advances every running sequence by one token; pages are taken as
  contexts grow, one when a sequence's next token starts a page. With no free page,
  the most recently admitted sequence is **preempted by recomputation**: its pages are
  freed and it re-enters the queue at the front, later prefilling its prompt and the
  tokens it had generated (that prefill samples its next token).

With pipeline parallelism each micro-batch is a ``Lane`` (vLLM's virtual engine):
its own running set and step counter, sharing the pipeline's ``KvPool``. A lane has
one step in flight: its next step is scheduled when the previous one leaves the last
stage, because the next token depends on it.

Decoding sequences are not visited per step: a sequence that joins decode at the
lane's decode step ``j0`` having emitted ``e`` tokens takes its last decode step at
``j0 + o - e - 1``, and needs a new page every ``kv_block_tokens`` steps, so two heaps
keyed by step find the ones that finish and the ones that grow; the summed context
grows by ``decode_n`` per step. A step costs O(prompts + finishing + growing) work.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field

from twinfer.sim.stage import StepBatch
from twinfer.spec.workload import Request

WATERMARK_SHARE = 100  # admission keeps max(1, blocks // this) pages free (vLLM's 1%)


class KvPool:
    """A pipeline's paged KV cache, counted in blocks."""

    def __init__(self, blocks: int) -> None:
        self.blocks = blocks
        self.used = 0
        self.peak = 0
        self.watermark = max(1, blocks // WATERMARK_SHARE)

    @property
    def free(self) -> int:
        return self.blocks - self.used

    def allocate(self, n: int) -> bool:
        if self.used + n > self.blocks:
            return False
        self.used += n
        self.peak = max(self.peak, self.used)
        return True

    def release(self, n: int) -> None:
        self.used -= n


@dataclass(slots=True)
class Seq:
    """A request as the lane tracks it (one object across preemptions)."""

    req: Request
    emitted: int = 0  # output tokens so far
    prompt: int = 0  # tokens its last prefill wrote (prompt + tokens before a preemption)
    blocks: int = 0
    j0: int = 0  # lane step of its first decode after that prefill
    order: int = 0  # admission order (the preemption victim is the latest)

    @property
    def context(self) -> int:
        """Tokens a prefill of it now would write."""
        return self.req.prompt_tokens + self.emitted


@dataclass
class Outcome:
    """What a step produced: requests that got their first token or finished."""

    first_token: list[int] = field(default_factory=list)
    finished: list[tuple[int, int]] = field(default_factory=list)  # (rid, tokens emitted)
    tokens: int = 0  # output tokens emitted by the step
    freed_blocks: int = 0
    preempted: list[int] = field(default_factory=list)


class Lane:
    """One micro-batch's scheduler state."""

    def __init__(self, kv: KvPool, max_running: int, max_tokens: int, block_tokens: int) -> None:
        self.kv = kv
        self.max_running = max_running
        self.max_tokens = max_tokens
        self.block_tokens = block_tokens
        self.waiting: deque[Seq] = deque()
        self.decoding: dict[int, Seq] = {}  # rid -> seq, in admission order
        self._offset_sum = 0  # sum of (prompt + 1 - j0): context at step j = this + n * j
        self._finish: list[tuple[int, int, int]] = []  # (last step, order, rid)
        self._grow: list[tuple[int, int, int]] = []  # (step needing a page, order, rid)
        self._admitted = 0
        self.step_index = 0  # decode steps taken (prefill steps do not advance decodes)
        self.unfinished = 0  # routed here and not finished (the router's load measure)
        self.preemptions = 0
        self._planned: list[Seq] = []

    @property
    def decode_n(self) -> int:
        return len(self.decoding)

    @property
    def running(self) -> int:
        return len(self.decoding)

    def add(self, req: Request) -> None:
        self.waiting.append(Seq(req))
        self.unfinished += 1

    def next_batch(self) -> StepBatch | None:
        """The next step's composition (a prefill if one fits, else a decode); None if
        idle. Takes the pages the step writes; a decode may preempt to find them."""
        planned = self._planned = self._admit()
        if planned:
            chunks = tuple((seq.context, 0) for seq in planned)
            return StepBatch(0, 0, chunks, sum(c for c, _ in chunks), len(planned))
        self._take_decode_pages()
        if not self.decoding:
            return None
        n = self.decode_n
        return StepBatch(n, self._offset_sum + n * self.step_index, (), 0, n)

    def _admit(self) -> list[Seq]:
        batch: list[Seq] = []
        tokens = 0
        for seq in self.waiting:
            n = seq.context
            if batch and tokens + n > self.max_tokens:
                break
            if self.running + len(batch) >= self.max_running:
                break
            need = self._pages(n)
            if need > self.kv.free - self.kv.watermark or not self.kv.allocate(need):
                break
            seq.blocks = need
            batch.append(seq)
            tokens += n
        for _ in batch:
            self.waiting.popleft()
        return batch

    def _take_decode_pages(self) -> None:
        """Pages for the tokens this decode step writes, preempting the latest admitted
        sequence while none is free (the executor's order: oldest first)."""
        j, grow = self.step_index, self._grow
        due = []
        while grow and grow[0][0] <= j:
            _, order, rid = heapq.heappop(grow)
            seq = self.decoding.get(rid)
            if seq is not None and seq.order == order:  # else finished or preempted
                due.append(seq)
        for seq in due:
            if seq.req.rid not in self.decoding:
                continue  # preempted below for an older one
            while self.kv.free < 1 and seq.req.rid in self.decoding:
                self._preempt(self.decoding[next(reversed(self.decoding))])
            if seq.req.rid in self.decoding:
                self.kv.allocate(1)
                seq.blocks += 1
                heapq.heappush(grow, (j + self.block_tokens, seq.order, seq.req.rid))

    def _preempt(self, seq: Seq) -> None:
        del self.decoding[seq.req.rid]
        self._offset_sum -= seq.prompt + 1 - seq.j0
        self.kv.release(seq.blocks)
        seq.blocks = 0
        # tokens generated so far: the prefill's one and one per decode step taken
        seq.emitted = seq.emitted + (self.step_index - seq.j0)
        self.waiting.appendleft(seq)
        self.preemptions += 1

    def complete(self) -> Outcome:
        """Advance past the step that ``next_batch`` planned."""
        if self._planned:
            return self._complete_prefill()
        out = Outcome(tokens=self.decode_n)
        j = self.step_index
        heap = self._finish
        while heap and heap[0][0] <= j:
            _, order, rid = heapq.heappop(heap)
            seq = self.decoding.get(rid)
            if seq is None or seq.order != order:
                continue  # preempted since: a stale entry
            del self.decoding[rid]
            self._offset_sum -= seq.prompt + 1 - seq.j0
            seq.emitted = seq.req.output_tokens
            self._retire(seq, out)
        self.step_index = j + 1
        return out

    def _complete_prefill(self) -> Outcome:
        out = Outcome()
        j0 = self.step_index  # decoding sequences advance on decode steps only
        for seq in self._planned:
            req = seq.req
            if seq.emitted == 0:
                out.first_token.append(req.rid)
            out.tokens += 1
            seq.prompt = seq.context
            seq.emitted += 1
            if seq.emitted >= req.output_tokens:
                self._retire(seq, out)
                continue
            seq.j0 = j0
            self._admitted += 1
            seq.order = self._admitted
            self.decoding[req.rid] = seq
            self._offset_sum += seq.prompt + 1 - seq.j0
            heapq.heappush(self._finish,
                           (seq.j0 + req.output_tokens - seq.emitted - 1, seq.order, req.rid))
            # the next page starts when the context before a step reaches a page boundary
            first = seq.j0 + (-seq.prompt) % self.block_tokens
            heapq.heappush(self._grow, (first, seq.order, req.rid))
        self._planned = []
        return out

    def _retire(self, seq: Seq, out: Outcome) -> None:
        self.kv.release(seq.blocks)
        out.freed_blocks += seq.blocks
        seq.blocks = 0
        out.finished.append((seq.req.rid, seq.req.output_tokens))
        self.unfinished -= 1

    def _pages(self, tokens: int) -> int:
        return -(-tokens // self.block_tokens)
