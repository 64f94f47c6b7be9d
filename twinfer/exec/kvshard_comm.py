"""Decode attention over a KV cache sharded along the sequence: three ways to combine.

In the `kv_sharded` layout (distributed flash decode; Iris's examples/10_flash_decode)
every rank of a group holds a slice of each sequence's tokens, for all KV heads, and
the same query. Each rank computes partial attention + LSE over its slice; the
partials are exchanged and merged by LSE, so that every rank ends with the exact
attention output. The variants differ only in the exchange:

- ``allgather``: one torch.distributed all-gather (NCCL on GPUs, gloo on CPU) of a
  packed [rows, head_dim + 1] fp32 buffer (output and LSE together: one collective,
  not two), then `lse_combine`;
- ``mpi``: the same through mpi4py ``Allgather`` on host buffers (the MPI baseline:
  device-to-host copy, MPI, host-to-device copy);
- ``fused``: the decode kernel stores its tiles straight into the peers' memory and
  flags them; the combine waits on the flags (`twinfer.exec.kvshard_fused`, GPUs only).

Every variant is a callable ``(q, shard) -> (out, lse)`` built by `make_attention`, and
has ``exchange(out, lse)``: the same merge of partials computed elsewhere (the
executor's paged caches and prompts).
Groups and communicators are passed in, never module globals.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from twinfer.kernels.combine import lse_combine
from twinfer.kernels.decode import flash_decode
from twinfer.kernels.peer_combine import KvShard

VARIANTS = ("allgather", "mpi", "fused")

# torch >= 2.12 renamed all_gather_into_tensor (the old name warns); 2.11 has only it.
all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor

ShardedAttention = Callable[[torch.Tensor, KvShard], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class CommContext:
    """What a variant communicates over: a torch.distributed group and, for the MPI
    baseline, an mpi4py communicator over the same ranks in the same order."""

    group: dist.ProcessGroup
    mpi_comm: object | None = None


def local_partial(q: torch.Tensor, shard: KvShard) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's partial attention: q [batch, q_heads, D] over its shard ->
    out [batch, q_heads, D] (q's dtype), lse [batch, q_heads] fp32."""
    return flash_decode(q, shard.k, shard.v, shard.seq_lens)


def _pack(out: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """[batch, heads, D] + [batch, heads] -> fp32 [batch * heads, D + 1]."""
    head_dim = out.shape[-1]
    return torch.cat([out.reshape(-1, head_dim).float(), lse.reshape(-1, 1)], dim=1)


def _merge(gathered: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """gathered fp32 [world * rows, D + 1] -> merged out shaped and typed like ``like``
    ([*rows, D]), lse fp32 [*rows]."""
    head_dim = like.shape[-1]
    parts = gathered.view(-1, *like.shape[:-1], head_dim + 1)
    out, lse = lse_combine(parts[..., :head_dim], parts[..., head_dim])
    return out.to(like.dtype), lse


class AllGatherAttention:
    """Partial attention, torch.distributed all-gather of (out, lse), LSE combine."""

    name = "allgather"

    def __init__(self, ctx: CommContext):
        self.group = ctx.group
        self.world = dist.get_world_size(ctx.group)

    def __call__(self, q: torch.Tensor, shard: KvShard) -> tuple[torch.Tensor, torch.Tensor]:
        return self.exchange(*local_partial(q, shard))

    def exchange(self, out: torch.Tensor, lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every rank's partial (out [*rows, D], lse [*rows]) -> the merged result."""
        packed = _pack(out, lse)
        gathered = packed.new_empty((self.world * packed.shape[0], packed.shape[1]))
        all_gather_single(gathered, packed, group=self.group)
        return _merge(gathered, out)


class MpiAttention:
    """The MPI baseline: the same exchange through mpi4py on host memory."""

    name = "mpi"

    def __init__(self, ctx: CommContext):
        if ctx.mpi_comm is None:
            raise ValueError("the mpi variant needs an mpi4py communicator (run under mpirun)")
        self.comm = ctx.mpi_comm
        self.world = self.comm.Get_size()

    def __call__(self, q: torch.Tensor, shard: KvShard) -> tuple[torch.Tensor, torch.Tensor]:
        return self.exchange(*local_partial(q, shard))

    def exchange(self, out: torch.Tensor, lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        host = _pack(out, lse).cpu().numpy()  # waits for the device
        recv = np.empty((self.world, *host.shape), dtype=np.float32)
        self.comm.Allgather(host, recv)
        gathered = torch.from_numpy(recv).view(-1, host.shape[1]).to(out.device)
        return _merge(gathered, out)


def make_attention(kind: str, ctx: CommContext, device: torch.device) -> ShardedAttention:
    """The variant named ``kind`` (one of `VARIANTS`) on ``ctx``'s ranks."""
    if kind == "allgather":
        return AllGatherAttention(ctx)
    if kind == "mpi":
        return MpiAttention(ctx)
    if kind == "fused":
        if device.type != "cuda":
            raise ValueError("the fused variant needs CUDA GPUs with peer access "
                             "(symmetric memory); use allgather or mpi on CPU")
        from twinfer.exec.kvshard_fused import FusedAttention

        return FusedAttention(ctx, device)
    raise ValueError(f"unknown kv_sharded comm {kind!r}; use one of {', '.join(VARIANTS)}")

