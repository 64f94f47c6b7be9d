"""The fused `kv_sharded` exchange: PyTorch symmetric memory + the peer_combine kernels.

Each rank allocates its receive buffers with ``torch.distributed._symmetric_memory``
and rendezvouses them over the group; the handle gives every peer's buffer address,
which the Triton kernels (`twinfer.kernels.peer_combine`) store into directly over
NVLink. NVLink multicast stays off (``TORCH_SYMM_MEM_DISABLE_MULTICAST=1``): a
program that uses it can take a shared host's GPUs out of service. The handle's own
``barrier()`` was seen to hang on a two-H200 machine, so the one synchronization this
needs (flags zeroed everywhere before anyone pushes) is a ``dist.barrier``.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from twinfer.exec.symm_allreduce import enable_group
from twinfer.kernels.peer_combine import (
    DecodeShape,
    KvShard,
    PeerBuffers,
    attend_and_push,
    combine_from_peers,
    fused_num_splits,
    push_partials,
)

os.environ["TORCH_SYMM_MEM_DISABLE_MULTICAST"] = "1"


def _symmetric(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
               group: dist.ProcessGroup) -> tuple[torch.Tensor, torch.Tensor]:
    """A zeroed symmetric tensor and the int64 [world] table of its peers' addresses."""
    import torch.distributed._symmetric_memory as symm_mem

    local = symm_mem.empty(*shape, dtype=dtype, device=device)
    local.zero_()
    handle = symm_mem.rendezvous(local, group.group_name)
    # buffer_ptrs are the peers' allocation bases; the tensor sits at the same offset
    # in every rank's allocation (symmetric by construction).
    offset = local.data_ptr() - handle.buffer_ptrs[handle.rank]
    addrs = torch.tensor([p + offset for p in handle.buffer_ptrs], dtype=torch.int64,
                         device=device)
    return local, addrs


def allocate_peer_buffers(shape: DecodeShape, group: dist.ProcessGroup,
                          device: torch.device) -> PeerBuffers:
    """Collective: every rank of ``group`` calls it with the same ``shape``."""
    enable_group(group.group_name)
    tensors = {name: _symmetric(s, dt, device, group)
               for name, (s, dt) in shape.buffer_shapes().items()}
    # Flags must be zero on every rank before any rank's first push lands.
    torch.cuda.synchronize(device)
    dist.barrier(group=group, device_ids=[device.index])
    torch.cuda.synchronize(device)
    return PeerBuffers(
        rank=dist.get_rank(group),
        out_parts=tensors["out_parts"][0], lse_parts=tensors["lse_parts"][0],
        flags=tensors["flags"][0], out_addrs=tensors["out_parts"][1],
        lse_addrs=tensors["lse_parts"][1], flag_addrs=tensors["flags"][1],
    )


class FusedAttention:
    """Partial attention stored into every peer's buffers, merged as tiles land.

    Buffers are allocated (collectively) on the first call for each shape; every rank
    must call with the same shapes in the same order, as SPMD decode does.
    """

    name = "fused"

    def __init__(self, ctx, device: torch.device):
        self.group = ctx.group
        self.world = dist.get_world_size(ctx.group)
        self.device = device
        self._buffers: dict[DecodeShape, PeerBuffers] = {}
        self._epochs: dict[DecodeShape, int] = {}

    def _round(self, shape: DecodeShape) -> tuple[PeerBuffers, int]:
        """The buffers for ``shape`` (allocated collectively on first use) and the next
        epoch of their rounds."""
        if shape not in self._buffers:
            self._buffers[shape] = allocate_peer_buffers(shape, self.group, self.device)
            self._epochs[shape] = 0
        self._epochs[shape] += 1
        return self._buffers[shape], self._epochs[shape]

    def __call__(self, q: torch.Tensor, shard: KvShard) -> tuple[torch.Tensor, torch.Tensor]:
        batch, q_heads, head_dim = q.shape
        kv_heads, capacity = shard.k.shape[1], shard.k.shape[2]
        splits = fused_num_splits(batch, kv_heads, capacity, self.device)
        bufs, epoch = self._round(DecodeShape(self.world, batch, q_heads, kv_heads, head_dim,
                                              splits))
        attend_and_push(q, shard, bufs, epoch)
        return combine_from_peers(bufs, epoch, q.dtype)

    def exchange(self, out: torch.Tensor, lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Partials computed elsewhere (out [batch, heads, D], lse [batch, heads]): pushed
        into the peers' buffers row by row, merged as the rows' flags rise."""
        batch, heads, head_dim = out.shape
        bufs, epoch = self._round(DecodeShape(self.world, batch, heads, heads, head_dim))
        push_partials(out, lse, bufs, epoch)
        return combine_from_peers(bufs, epoch, out.dtype)
