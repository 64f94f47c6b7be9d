"""A step's host arrays to the GPU in one asynchronous copy.

Every step sends a few small numpy arrays of its plan (token ids, positions, KV slots,
sequence lengths, block table) to the GPU. From pageable memory each copy first waits
for the stream to drain (CUDA's rule for pageable host-to-device copies), so no rank
could enqueue a step before its GPU had finished the previous one: with pipeline
stages, where two micro-batches are in flight, every step's host preparation then sat
on the GPU's critical path. From page-locked memory the copy is queued like a kernel.

`HostStaging` keeps a small ring of page-locked buffers. `stage` packs a step's arrays
into the next buffer (16-byte aligned), sends the buffer with one copy, and returns
device views of each array. A buffer is written again only after the copy that read
it has run (one CUDA event per buffer; with a ring longer than the micro-batches in
flight the wait never blocks). Allocating page-locked memory per array instead (torch's
``pin_memory``) cost the host 30-50 us per array and step on the H100 machine.

On CPU the arrays are simply wrapped (no copies to overlap).
"""

from __future__ import annotations

import numpy as np
import torch

ALIGN = 16
RING = 8
MIN_BYTES = 1 << 16


def packed(sizes: list[int]) -> tuple[list[int], int]:
    """(offsets, total bytes) of buffers of ``sizes`` bytes packed back to back, each
    starting on an ``ALIGN``-byte boundary (so any dtype view of a slice is aligned)."""
    offsets, total = [], 0
    for n in sizes:
        offsets.append(total)
        total += -(-n // ALIGN) * ALIGN
    return offsets, total


class HostStaging:
    """A ring of page-locked staging buffers for one device (one stream at a time)."""

    def __init__(self, device: torch.device, ring: int = RING) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self._bufs: list[torch.Tensor | None] = [None] * ring
        self._events: list[torch.cuda.Event | None] = [None] * ring
        self._next = 0

    def _slot(self, nbytes: int) -> tuple[int, torch.Tensor]:
        i = self._next
        self._next = (i + 1) % len(self._bufs)
        event = self._events[i]
        if event is not None:
            event.synchronize()  # the copy that last read this buffer has run
        buf = self._bufs[i]
        if buf is None or buf.numel() < nbytes:
            size = max(MIN_BYTES, 1 << (nbytes - 1).bit_length())
            buf = self._bufs[i] = torch.empty(size, dtype=torch.uint8, pin_memory=True)
        return i, buf

    def stage(self, *arrays: np.ndarray) -> list[torch.Tensor]:
        """Device tensors holding ``arrays`` (same dtypes and shapes), sent together."""
        if not self.cuda:
            return [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
        offsets, total = packed([a.nbytes for a in arrays])
        i, buf = self._slot(total)
        host = buf.numpy()
        for a, off in zip(arrays, offsets, strict=True):
            host[off:off + a.nbytes] = np.ascontiguousarray(a).view(np.uint8).reshape(-1)
        dev = torch.empty(total, dtype=torch.uint8, device=self.device)
        dev.copy_(buf[:total], non_blocking=True)
        self._record(i)
        return [dev[off:off + a.nbytes].view(torch_dtype(a.dtype)).view(a.shape)
                for a, off in zip(arrays, offsets, strict=True)]

    def fill(self, dst: torch.Tensor, write) -> None:
        """Copy a host image of the device tensor ``dst`` (uint8, contiguous) into it:
        ``write(host)`` fills the numpy uint8 image (the previous contents of this ring
        buffer, not of ``dst``), then one asynchronous copy sends it."""
        nbytes = dst.numel()
        if not self.cuda:
            write(dst.numpy())
            return
        i, buf = self._slot(nbytes)
        write(buf.numpy()[:nbytes])
        dst.copy_(buf[:nbytes], non_blocking=True)
        self._record(i)

    def _record(self, i: int) -> None:
        event = self._events[i]
        if event is None:
            event = self._events[i] = torch.cuda.Event()
        event.record()


_DTYPES = {np.dtype(np.int64): torch.int64, np.dtype(np.int32): torch.int32,
           np.dtype(np.float32): torch.float32, np.dtype(np.bool_): torch.bool,
           np.dtype(np.uint8): torch.uint8}


def torch_dtype(dtype: np.dtype) -> torch.dtype:
    """The torch dtype of a numpy dtype a plan's arrays use."""
    try:
        return _DTYPES[np.dtype(dtype)]
    except KeyError:
        raise TypeError(f"cannot stage numpy dtype {dtype}") from None
