"""CUDA graphs for decode steps, one per bucketed batch size.

A decode step of an 8B model launches several hundred small kernels; at batch 1 the
GPU finishes each faster than Python enqueues the next. Capturing the stage's decode
forward once per batch bucket and replaying it removes that overhead (gpt-fast and
vLLM do the same). Shapes are static by construction: the batch is padded to its
bucket (padding rows have slot -1, seq_len 0: they write nothing and read nothing),
and the block table always has the run's ``max_blocks`` columns. The TP all-reduces
and the logits all-gather are captured with the rest (NCCL supports capture); the
stage-to-stage transfer stays outside the graph.

Inputs live in static buffers sized for the largest bucket; the graph for bucket b is
captured on their first b rows, so every graph reads the same addresses.
"""

from __future__ import annotations

import numpy as np
import torch

from twinfer.exec.attention import AttentionInput
from twinfer.exec.kv_cache import KVCache
from twinfer.exec.model import Transformer
from twinfer.exec.scheduler import Plan


def buckets_up_to(max_batch: int) -> list[int]:
    """1, 2, 4, 8, then multiples of 16 (padding wastes at most half a bucket step)."""
    sizes = [b for b in (1, 2, 4, 8) if b < max_batch]
    sizes += list(range(16, max_batch, 16))
    return sorted(set(sizes + [max_batch]))


def pinned(a: np.ndarray) -> torch.Tensor:
    """``a`` in page-locked host memory (torch's caching host allocator: no
    ``cudaHostAlloc`` per call, and a block is not reused before the copies that read it
    have run).

    A copy to the GPU from pageable memory first waits for the stream to drain: a rank
    could not enqueue its next step before its GPU finished the previous one, so with
    pipeline stages (two micro-batches in flight) every step's host preparation sat on
    the GPU's critical path. From pinned memory the copy is queued like a kernel."""
    return torch.from_numpy(a).pin_memory()


def to_device(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """A plan's numpy array on ``device``, without waiting for the stream (see `pinned`)."""
    if device.type != "cuda":
        return torch.from_numpy(a).to(device)
    return pinned(a).to(device, non_blocking=True)


def decode_input(plan: Plan, device: torch.device) -> AttentionInput:
    """Unpadded device tensors of a decode plan (eager path)."""

    def t(a):
        return to_device(a, device)

    return AttentionInput(positions=t(plan.positions), slots=t(plan.slots),
                          block_table=t(plan.block_table), seq_lens=t(plan.seq_lens))


class DecodeGraphs:
    """Captured decode forwards of one stage, keyed by bucket size."""

    def __init__(self, model: Transformer, cache: KVCache, max_blocks: int,
                 buckets: list[int], first_stage: bool) -> None:
        self.model, self.cache, self.buckets = model, cache, buckets
        dev = cache.storage.device
        top = max(buckets)
        if first_stage:
            self.x = torch.zeros(top, dtype=torch.int64, device=dev)  # token ids
        else:
            dtype = next(model.parameters()).dtype
            self.x = torch.zeros(top, model.spec.hidden, dtype=dtype, device=dev)
        self.positions = torch.zeros(top, dtype=torch.int64, device=dev)
        self.slots = torch.full((top,), -1, dtype=torch.int64, device=dev)
        self.table = torch.zeros(top, max_blocks, dtype=torch.int32, device=dev)
        self.seq_lens = torch.zeros(top, dtype=torch.int32, device=dev)
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool = None

    def _input(self, b: int) -> AttentionInput:
        return AttentionInput(positions=self.positions[:b], slots=self.slots[:b],
                              block_table=self.table[:b], seq_lens=self.seq_lens[:b])

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every bucket (all TP ranks of the stage call this together: the
        warm-up runs execute real collectives)."""
        for b in self.buckets:
            self.capture_bucket(b)

    @torch.inference_mode()
    def capture_bucket(self, b: int) -> None:
        """Warm up, then capture bucket ``b``. The warm-up runs real collectives (NCCL
        communicators and Triton kernels are ready before capture); the capture is
        thread-local, so that other threads' CUDA calls (the NCCL watchdog's event
        queries) cannot invalidate it, and waits for the warm-up on this device."""
        step, x = self._input(b), self.x[:b]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: autotuning, lazy inits, allocations
            for _ in range(2):
                self.model(x, step, self.cache)
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            out = self.model(x, step, self.cache)
        self._pool = graph.pool()
        self._graphs[b] = (graph, out)
        torch.cuda.synchronize()

    def fits(self, batch: int) -> bool:
        return batch <= self.buckets[-1] and bool(self._graphs)

    @torch.inference_mode()
    def run(self, x: torch.Tensor, plan: Plan) -> torch.Tensor:
        """Replay the smallest bucket holding ``plan.batch`` rows; returns the first
        ``plan.batch`` rows of the output (logits or hidden states), copied out of
        the graph's buffer so the next replay cannot overwrite them."""
        n = plan.batch
        b = next(s for s in self.buckets if s >= n)
        self.x[:n].copy_(x)
        self.x[n:b].zero_()
        self.positions[:n].copy_(pinned(plan.positions), non_blocking=True)
        self.slots[:n].copy_(pinned(plan.slots), non_blocking=True)
        self.slots[n:b].fill_(-1)
        self.seq_lens[:n].copy_(pinned(plan.seq_lens), non_blocking=True)
        self.seq_lens[n:b].zero_()
        self.table[:n].copy_(pinned(plan.block_table), non_blocking=True)
        graph, out = self._graphs[b]
        graph.replay()
        return out[:n].clone()
