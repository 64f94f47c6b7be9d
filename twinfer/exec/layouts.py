"""Which attention a rank's stage runs, by layout kind.

`uniform` and `hetero` stages attend over their own paged cache (`TPComm`, the model's
default path). A `kv_sharded` stage attends over a sequence-split cache
(`twinfer.exec.kvshard_layer`); an `fa_pool` base stage sends long sequences'
attention to its pool (`twinfer.exec.fa_pool_exec`). Called by every active rank while it builds its
engine, so that the collective set-up (an MPI sub-communicator per TP group) happens
everywhere in the same order.
"""

from __future__ import annotations

from twinfer.exec.groups import Groups
from twinfer.exec.tp import TPComm
from twinfer.spec import KvShardedLayout, ModelSpec


def stage_comm(opts: object, spec: ModelSpec, groups: Groups, tp: TPComm,
               control: object) -> tuple[object, int | None]:
    """(the model's ``comm``, KV heads per cache page or None for the TP split), from
    the engine options' ``layout`` and ``pool`` (an FA Pool's `PoolLink`)."""
    layout = opts.layout
    if getattr(opts, "pool", None) is not None:
        from twinfer.exec.fa_pool_exec import FaPoolComm

        return FaPoolComm(tp, spec, opts.pool, groups.rank, control.device), None
    if isinstance(layout, KvShardedLayout) and groups.tp_size > 1:
        from twinfer.exec.kvshard_comm import CommContext
        from twinfer.exec.kvshard_layer import KvShardedComm

        mpi_comm = control.active.Split(groups.pipeline_index, groups.tp_rank)
        ctx = CommContext(groups.tp, mpi_comm)
        return KvShardedComm(tp, spec, ctx, layout.comm, control.device), spec.kv_heads
    return tp, None


def graphs_allowed(layout: object) -> bool:
    """CUDA graphs freeze host-side state (the fused exchange's epochs, MPI copies):
    only the plain layouts replay them."""
    return getattr(layout, "kind", "uniform") in ("uniform", "hetero")
