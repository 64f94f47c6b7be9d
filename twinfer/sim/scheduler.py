"""Iteration-level continuous batching: which sequences run in the next step.

Orca (Yu et al., OSDI 2022) schedules per iteration instead of per request; vLLM
(Kwon et al., SOSP 2023) adds a paged KV cache. This scheduler follows vLLM's
chunked-prefill policy, first come first served: every running sequence decodes one
token; the rest of the step's token budget (``max_prefill_tokens``) continues
partly-prefilled prompts, then admits waiting requests while ``max_running`` and the
KV cache allow. A prompt longer than the budget is prefilled in chunks over several
steps. Admission reserves KV blocks for the whole sequence (prompt + output), so a
running sequence is never preempted; vLLM instead allocates blocks as tokens arrive
and preempts under pressure, which this twin does not model. The head of the queue
that does not fit blocks those behind it (FCFS, as vLLM).

With pipeline parallelism each micro-batch is a ``Lane`` (vLLM's virtual engine):
its own running set and step counter, sharing the pipeline's ``KvPool``. A lane has
one step in flight: its next step is scheduled when the previous one leaves the last
stage, because the next token depends on it.

Decoding sequences are not visited per step: a sequence that joins decode at lane
step ``j0`` with ``o`` output tokens takes its last decode step at ``j0 + o - 2``
(its first token came from prefill), so a heap keyed by that step finds the ones
that finish, and the summed context grows by ``decode_n`` per step. A step costs
O(chunks + finishing) work, independent of the batch size.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field

from twinfer.sim.stage import StepBatch
from twinfer.spec.workload import Request


class KvPool:
    """A pipeline's paged KV cache, counted in blocks."""

    def __init__(self, blocks: int) -> None:
        self.blocks = blocks
        self.used = 0
        self.peak = 0

    def allocate(self, n: int) -> bool:
        if self.used + n > self.blocks:
            return False
        self.used += n
        self.peak = max(self.peak, self.used)
        return True

    def free(self, n: int) -> None:
        self.used -= n


@dataclass(slots=True)
class Prefilling:
    req: Request
    blocks: int
    done: int = 0  # prompt tokens already in the KV cache


@dataclass
class Outcome:
    """What a step produced: requests that got their first token or finished."""

    first_token: list[int] = field(default_factory=list)
    finished: list[tuple[int, int]] = field(default_factory=list)  # (rid, tokens emitted)
    tokens: int = 0  # output tokens emitted by the step
    freed_blocks: int = 0


class Lane:
    """One micro-batch's scheduler state."""

    def __init__(self, kv: KvPool, max_running: int, max_tokens: int, block_tokens: int) -> None:
        self.kv = kv
        self.max_running = max_running
        self.max_tokens = max_tokens
        self.block_tokens = block_tokens
        self.waiting: deque[Request] = deque()
        self.prefilling: deque[Prefilling] = deque()
        self.decode_n = 0
        self._offset_sum = 0  # sum of (prompt + 1 - j0): context at step j = this + n * j
        self._finish: list[tuple[int, int, int, int, int]] = []  # (last step, rid, j0, p, blocks)
        self.step_index = 0
        self.unfinished = 0  # routed here and not finished (the router's load measure)
        self._planned: list[tuple[Prefilling, int]] = []

    @property
    def running(self) -> int:
        return self.decode_n + len(self.prefilling)

    def add(self, req: Request) -> None:
        self.waiting.append(req)
        self.unfinished += 1

    def next_batch(self) -> StepBatch | None:
        """The next step's composition, admitting waiting requests; None if idle."""
        budget = self.max_tokens - self.decode_n
        planned = self._planned = []
        chunks = []
        logits = self.decode_n
        for seq in self.prefilling:
            if budget <= 0:
                break
            c = min(seq.req.prompt_tokens - seq.done, budget)
            planned.append((seq, c))
            chunks.append((c, seq.done))
            budget -= c
            logits += seq.done + c == seq.req.prompt_tokens
        while budget > 0 and self.waiting and self.running < self.max_running:
            req = self.waiting[0]
            blocks = -(-(req.prompt_tokens + req.output_tokens) // self.block_tokens)
            if not self.kv.allocate(blocks):
                break
            self.waiting.popleft()
            seq = Prefilling(req, blocks)
            self.prefilling.append(seq)
            c = min(req.prompt_tokens, budget)
            planned.append((seq, c))
            chunks.append((c, 0))
            budget -= c
            logits += c == req.prompt_tokens
        if not chunks and not self.decode_n:
            return None
        ctx_sum = self._offset_sum + self.decode_n * self.step_index
        prefill = sum(c for c, _ in chunks)
        return StepBatch(self.decode_n, ctx_sum, tuple(chunks), prefill, logits)

    def complete(self) -> Outcome:
        """Advance past the step that ``next_batch`` planned."""
        out = Outcome(tokens=self.decode_n)
        j = self.step_index
        for seq, c in self._planned:
            seq.done += c
            if seq.done < seq.req.prompt_tokens:
                continue
            req = seq.req
            self.prefilling.popleft()  # completed prompts are always at the head
            out.first_token.append(req.rid)
            out.tokens += 1
            if req.output_tokens == 1:
                self._retire(seq.blocks, out)
                out.finished.append((req.rid, 1))
                continue
            j0 = j + 1
            self.decode_n += 1
            self._offset_sum += req.prompt_tokens + 1 - j0
            heapq.heappush(self._finish, (j0 + req.output_tokens - 2, req.rid, j0,
                                          req.prompt_tokens, seq.blocks))
        self._planned = []
        heap = self._finish
        while heap and heap[0][0] == j:
            _, rid, j0, prompt, blocks = heapq.heappop(heap)
            self.decode_n -= 1
            self._offset_sum -= prompt + 1 - j0
            self._retire(blocks, out)
            out.finished.append((rid, 2 + j - j0))  # first token + decode steps j0..j
        self.step_index = j + 1
        return out

    def _retire(self, blocks: int, out: Outcome) -> None:
        self.kv.free(blocks)
        out.freed_blocks += blocks
        self.unfinished -= 1
