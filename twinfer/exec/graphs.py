"""CUDA graphs for decode steps, one per bucketed batch size.

A decode step of an 8B model launches several hundred small kernels; at batch 1 the
GPU finishes each faster than Python enqueues the next. Capturing the stage's decode
forward once per batch bucket and replaying it removes that overhead (gpt-fast and
vLLM do the same). Shapes are static by construction: the batch is padded to its
bucket (padding rows have slot -1, seq_len 0: they write nothing and read nothing),
and the block table always has the run's ``max_blocks`` columns. The TP all-reduces
and the logits all-gather are captured with the rest (NCCL supports capture); the
stage-to-stage transfer stays outside the graph. The project's Triton kernels are
captured with programmatic dependent launch (``TWINFER_PDL``, on Hopper).

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
from twinfer.exec.staging import HostStaging, packed, torch_dtype
from twinfer.kernels.backend import pdl_scope


def buckets_up_to(max_batch: int) -> list[int]:
    """1, 2, 4, 8, then multiples of 16 (padding wastes at most half a bucket step)."""
    sizes = [b for b in (1, 2, 4, 8) if b < max_batch]
    sizes += list(range(16, max_batch, 16))
    return sorted(set(sizes + [max_batch]))


def decode_input(plan: Plan, staging: HostStaging) -> AttentionInput:
    """Unpadded device tensors of a decode plan (eager path), sent in one copy."""
    positions, slots, table, seq_lens = staging.stage(plan.positions, plan.slots,
                                                      plan.block_table, plan.seq_lens)
    return AttentionInput(positions=positions, slots=slots, block_table=table,
                          seq_lens=seq_lens)


class DecodeGraphs:
    """Captured decode forwards of one stage, keyed by bucket size."""

    def __init__(self, model: Transformer, cache: KVCache, max_blocks: int,
                 buckets: list[int], first_stage: bool,
                 staging: HostStaging | None = None) -> None:
        self.model, self.cache, self.buckets = model, cache, buckets
        dev = cache.storage.device
        self.staging = staging or HostStaging(dev)
        top = max(buckets)
        if first_stage:
            self.x = torch.zeros(top, dtype=torch.int64, device=dev)  # token ids
        else:
            dtype = next(model.parameters()).dtype
            self.x = torch.zeros(top, model.spec.hidden, dtype=dtype, device=dev)
        # positions, slots, sequence lengths and block table in one device region, so
        # that one copy from a staging buffer fills them all (twinfer.exec.staging)
        shapes = {"positions": ((top,), np.int64), "slots": ((top,), np.int64),
                  "seq_lens": ((top,), np.int32), "table": ((top, max_blocks), np.int32)}
        sizes = [int(np.prod(shape)) * np.dtype(dtype).itemsize
                 for shape, dtype in shapes.values()]
        offsets, total = packed(sizes)
        self._layout = {name: (off, nbytes, shape, dtype) for (name, (shape, dtype)), off, nbytes
                        in zip(shapes.items(), offsets, sizes, strict=True)}
        self.region = torch.zeros(total, dtype=torch.uint8, device=dev)
        views = {name: self.region[off:off + nb].view(torch_dtype(dtype)).view(shape)
                 for name, (off, nb, shape, dtype) in self._layout.items()}
        self.positions, self.slots = views["positions"], views["slots"]
        self.seq_lens, self.table = views["seq_lens"], views["table"]
        self.slots.fill_(-1)
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
        # The project's kernels go in with programmatic dependent launch where
        # TWINFER_PDL allows (twinfer.kernels.backend): each one's launch overlaps the
        # tail of the kernel before it.
        with pdl_scope(b):
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

    def _write(self, host: np.ndarray, plan: Plan) -> None:
        """The host image of the input region for ``plan``: its rows first, then
        padding (slot -1 and length 0: padding rows write and read nothing)."""
        n = plan.batch

        def field(name: str) -> np.ndarray:
            off, nbytes, shape, dtype = self._layout[name]
            return host[off:off + nbytes].view(dtype).reshape(shape)

        for name, rows, pad in (("positions", plan.positions, 0), ("slots", plan.slots, -1),
                                ("seq_lens", plan.seq_lens, 0),
                                ("table", plan.block_table, 0)):
            out = field(name)
            out[:n] = rows
            out[n:] = pad

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
        self.staging.fill(self.region, lambda host: self._write(host, plan))
        graph, out = self._graphs[b]
        graph.replay()
        return out[:n].clone()
