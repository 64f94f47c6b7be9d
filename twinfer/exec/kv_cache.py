"""The paged KV cache (PagedAttention, Kwon et al., SOSP 2023) and its sizing.

Each rank holds, for each of its layers, a K and a V page pool
[num_blocks, page_size, kv_heads_local, head_dim]. A sequence owns a list of page
numbers (its block table); token n of the sequence sits in page ``blocks[n // page]``
at row ``n % page``. Page numbers are the same on every rank of a pipeline (one
`BlockAllocator`, on the pipeline's driver, decides them), so the plan broadcast to
the ranks carries block tables and slots, never tensors.

Sizing: on a GPU the pool takes what is left of ``gpu_memory_utilization`` of the
device's memory after the weights and the peak workspace of the largest step (measured
by a probe forward, as vLLM does); on CPU a fixed budget. Every rank of a pipeline
must agree on ``num_blocks``: the smallest rank's count wins (`twinfer.exec.engine`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CPU_BUDGET_BYTES = 64 << 20  # per rank: tests and CPU runs use tiny models


class OutOfPages(Exception):
    """The pool has fewer free pages than asked for (the scheduler preempts)."""


class BlockAllocator:
    """A free list of page numbers, with the statistics the results report."""

    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self._free = list(range(num_blocks - 1, -1, -1))  # pop() hands out 0, 1, 2, ...
        self.peak_used = 0

    @property
    def free(self) -> int:
        return len(self._free)

    @property
    def used(self) -> int:
        return self.num_blocks - len(self._free)

    def allocate(self, count: int) -> list[int]:
        if count > len(self._free):
            raise OutOfPages(f"asked for {count} pages, {len(self._free)} free")
        pages = [self._free.pop() for _ in range(count)]
        self.peak_used = max(self.peak_used, self.used)
        return pages

    def release(self, pages: list[int]) -> None:
        self._free.extend(reversed(pages))


@dataclass(frozen=True)
class CacheShape:
    """The geometry of one rank's pools."""

    layers: range
    page_size: int
    kv_heads: int  # local (after TP split or replication)
    head_dim: int
    dtype: torch.dtype

    @property
    def bytes_per_page(self) -> int:
        """K and V of one page over all this rank's layers."""
        item = torch.empty((), dtype=self.dtype).element_size()
        return 2 * len(self.layers) * self.page_size * self.kv_heads * self.head_dim * item


class KVCache:
    """K and V page pools for this rank's layers, in one allocation."""

    def __init__(self, shape: CacheShape, num_blocks: int, device: torch.device) -> None:
        self.shape, self.num_blocks = shape, num_blocks
        # [layers, 2 (K, V), num_blocks, page_size, kv_heads, head_dim]
        self.storage = torch.zeros(len(shape.layers), 2, num_blocks, shape.page_size,
                                   shape.kv_heads, shape.head_dim, dtype=shape.dtype,
                                   device=device)
        self._first = shape.layers.start

    def pages(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(K pages, V pages) of global layer ``layer``, each [num_blocks, page, kv, D]."""
        both = self.storage[layer - self._first]
        return both[0], both[1]

    @property
    def nbytes(self) -> int:
        return self.storage.numel() * self.storage.element_size()


def blocks_for_budget(shape: CacheShape, budget_bytes: int) -> int:
    return max(0, budget_bytes // shape.bytes_per_page)


def gpu_budget_bytes(device: torch.device, utilization: float,
                     peak_bytes: int) -> tuple[int, int]:
    """(bytes for the KV pools, bytes left after weights and workspace).

    The pools get ``utilization`` of the device minus everything else: ``peak_bytes``
    is torch's peak allocation (weights + the probe step's workspace); memory outside
    torch's allocator (CUDA context, NCCL buffers) is what the device reports used
    beyond torch's reserved pool.
    """
    free, total = torch.cuda.mem_get_info(device)
    outside_torch = max(0, (total - free) - torch.cuda.memory_reserved(device))
    left = total - peak_bytes - outside_torch
    return int(total * utilization) - peak_bytes - outside_torch, left


def slot_of(blocks: list[int], position: int, page_size: int) -> int:
    """Flat slot (page * page_size + row) of a token position in a sequence."""
    return blocks[position // page_size] * page_size + position % page_size
