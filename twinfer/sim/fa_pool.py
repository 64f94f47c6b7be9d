"""Cost and memory of an `fa_pool` layout: a base pipeline plus a shared attention pool.

FA Pool (seed 002): the base GPUs run embeddings, projections, FFN and the LM head
for every sequence, and attention for sequences up to ``threshold_tokens``. A
sequence of n > T tokens has its attention split block-wise over p pool GPUs
(``FaPoolLayout.pool_size_for``), b = ceil(n / p) keys each; its KV cache lives on
those pool GPUs. Per layer of a step, for the long sequences:

1. the base TP group sends each one's query to its p pool GPUs and its new K/V to
   the GPU that holds the sequence's tail (every base GPU sends its heads' share);
2. each pool GPU attends the queries over its blocks -> partial output + LSE;
   sequences spread over the pool, so a step's long sequences occupy
   ``min(P, n_long x p)`` pool GPUs, each holding ``ceil(n_long x p / used)`` blocks;
3. the partials are merged by log-sum-exp up a binary tree (ceil(log2 p) levels of
   send + combine inside the pool) and the result goes back to the base.

A prompt longer than T is attended on the pool ring-attention style instead (query
blocks per pool GPU, K/V circulating): blockwise keys with a merge would move one
fp32 partial per query token per pool GPU, far more than the K/V themselves.

The base waits for its pool round trip in every layer, so a step's stage time is
the base's own work plus the pool's; the pool GPUs are a shared resource that base
pipelines and micro-batches contend for (``pool_demand`` tells the engine how many
pool GPUs a step holds and for how long). Whether a decode batch goes to the pool
is decided on its mean context (the engine's batches carry the summed context, not
each sequence's): exact when a batch's sequences have equal lengths, as in the
paper's sweeps.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil, log2

from twinfer.sim.cost import CostModel
from twinfer.sim.memory import GIB, GpuMemory
from twinfer.sim.profile import Profile
from twinfer.sim.stage import StageCost, StageSpec, StepBatch
from twinfer.spec.errors import SpecError
from twinfer.spec.layout import FaPoolLayout
from twinfer.spec.model import ModelSpec
from twinfer.spec.workload import SchedulerSpec

PARTIAL_BYTES = 4  # partial outputs and LSEs travel in fp32


@dataclass(frozen=True)
class PoolSpec:
    """The pool as the base stages see it."""

    layout: FaPoolLayout
    cost: CostModel  # the pool GPUs' type (one type per pool)
    to_pool_link: str  # base <-> pool
    pool_link: str  # inside the pool (the reduction tree)
    base_tp: int

    @property
    def size(self) -> int:
        return len(self.layout.pool_gpus)


class FaPoolStageCost(StageCost):
    """A base stage: its own work, plus the pool round trips of its long sequences."""

    graph_decode = False  # the executor decodes this layout eagerly (per-step headers)

    def __init__(self, spec: StageSpec, cost: CostModel, pool: PoolSpec) -> None:
        super().__init__(spec, cost)
        self.pool = pool
        # every layer's pool round trip is c10d calls from the host, as TP collectives
        overheads = cost.profile.overheads
        self.eager_floor_s = overheads.eager_floor_s(spec.num_layers, max(spec.tp, 2))
        self.prefill_floor_s = overheads.eager_floor_s(spec.num_layers, max(spec.tp, 2),
                                                       prefill=True)
        self._last: tuple[tuple, tuple[float, float, float, int]] = ((), (0.0, 0.0, 0.0, 0))

    def step(self, batch: StepBatch) -> tuple[float, float]:
        time_s, comm_s = super().step(batch)
        return time_s, comm_s + self._split(batch)[1]

    def attention_s(self, batch: StepBatch) -> float:
        return self._split(batch)[0]

    def pool_demand(self, batch: StepBatch) -> tuple[int, float]:
        """(pool GPUs held, seconds of pool work) of this stage's step on ``batch``."""
        _, _, pool_s, gpus = self._split(batch)
        return gpus, pool_s

    def _split(self, batch: StepBatch) -> tuple[float, float, float, int]:
        """All layers: (attention time incl. pool round trips, of which communication,
        of which pool compute, pool GPUs used)."""
        key = (batch.decode_n, batch.decode_ctx_sum, batch.chunks)
        if self._last[0] == key:
            return self._last[1]
        layout = self.pool.layout
        short_n, short_ctx, short_chunks = 0, 0, []
        long_decode: tuple[int, float] | None = None
        long_chunks = []
        if batch.decode_n:
            mean = batch.decode_ctx_sum / batch.decode_n
            if layout.pool_size_for(ceil(mean)):
                long_decode = (batch.decode_n, mean)
            else:
                short_n, short_ctx = batch.decode_n, batch.decode_ctx_sum
        for new, prior in batch.chunks:
            (long_chunks if layout.pool_size_for(prior + new) else short_chunks).append(
                (new, prior))
        base = super().attention_s(StepBatch(short_n, short_ctx, tuple(short_chunks)))
        compute, comm, gpus = self._pool_layer(long_decode, long_chunks)
        layers = self.spec.num_layers
        out = (base + (compute + comm) * layers, comm * layers, compute * layers, gpus)
        self._last = (key, out)
        return out

    def _pool_layer(self, decode: tuple[int, float] | None,
                    chunks: list[tuple[int, int]]) -> tuple[float, float, int]:
        """One layer's pool work: (compute s, communication s, GPUs used)."""
        pool, m = self.pool, self.spec.model
        pc = pool.cost
        row_bytes = (m.q_dim + m.heads) * PARTIAL_BYTES  # one token's partial + LSEs
        compute = comm = 0.0
        used_max = 0
        if decode is not None:
            n, mean = decode
            p = pool.layout.pool_size_for(ceil(mean))
            used = min(pool.size, n * p)
            per_gpu = ceil(n * p / used)
            compute += pc.decode_attention_s(per_gpu, ceil(mean / p), m.heads, m.kv_heads,
                                             m.head_dim)
            comm += self._round_trip(n, p, per_gpu * row_bytes)
            if p > 1:  # the LSE merges up the tree
                compute += ceil(log2(p)) * pc.elementwise_s(2 * per_gpu * row_bytes)
            used_max = used
        if chunks:
            slots = sum(pool.layout.pool_size_for(prior + new) for new, prior in chunks)
            used = min(pool.size, slots)
            times = []
            for new, prior in chunks:
                p = pool.layout.pool_size_for(prior + new)
                full = pc.prefill_chunk_s(new, prior, m.heads, m.kv_heads, m.head_dim)
                # queries split in p blocks; the last block sees the most keys
                share = min(1.0, (prior + new) / (p * (prior + new / 2)))
                times.append((full * share, p))
                comm += self._prefill_trip(new, prior, p)
            compute += max(max(t for t, _ in times), sum(t * p for t, p in times) / used)
            used_max = max(used_max, used)
        return compute, comm, used_max

    def _prefill_trip(self, new: int, prior: int, p: int) -> float:
        """A prompt chunk on the pool, ring-attention style (Liu et al., 2023): each pool
        GPU takes a block of the chunk's queries; the chunk's Q and new K/V go out of
        the base TP group, the K/V blocks circulate round the pool ring, and each GPU
        returns complete outputs for its queries (no partial merge)."""
        pool, m = self.pool, self.spec.model
        db = m.dtype_bytes
        out_bytes = new * (m.q_dim + 2 * m.kv_dim) * db / pool.base_tp
        ring_bytes = (prior + new) * 2 * m.kv_dim * db * (p - 1) / p
        back_bytes = new * m.q_dim * db / pool.base_tp
        c, pc = self.cost, pool.cost
        t = c.collective_s("send_recv", out_bytes, 2, pool.to_pool_link)
        if p > 1:
            t += pc.collective_s("send_recv", ring_bytes, 2, pool.pool_link)
        return t + pc.collective_s("send_recv", back_bytes, 2, pool.to_pool_link)

    def _round_trip(self, tokens: int, p: int, partial_bytes: float) -> float:
        """Send queries (to p GPUs) and new K/V (to one) out of the base TP group, merge
        ``partial_bytes`` per pool GPU up ceil(log2 p) levels, return the result."""
        pool, m = self.pool, self.spec.model
        db = m.dtype_bytes
        out_bytes = tokens * (p * m.q_dim + 2 * m.kv_dim) * db / pool.base_tp
        back_bytes = tokens * m.q_dim * db / pool.base_tp
        c, pc = self.cost, pool.cost
        t = c.collective_s("send_recv", out_bytes, 2, pool.to_pool_link)
        if p > 1:
            t += ceil(log2(p)) * pc.collective_s("send_recv", partial_bytes, 2, pool.pool_link)
        return t + pc.collective_s("send_recv", back_bytes, 2, pool.to_pool_link)


def pool_memory(model: ModelSpec, layout: FaPoolLayout, gpu_types: list[str],
                profiles: dict[str, Profile], scheduler: SchedulerSpec) -> list[GpuMemory]:
    """Each pool GPU's budget: no weights, a workspace, the rest KV of long sequences
    (all layers and heads of its blocks)."""
    out = []
    kv_per_token = model.kv_bytes_per_token
    for gpu, gpu_type in zip(layout.pool_gpus, gpu_types, strict=True):
        profile = profiles[gpu_type]
        capacity = profile.device.memory_bytes
        usable = int(capacity * scheduler.gpu_memory_utilization)
        workspace = profile.memory.workspace_bytes
        if workspace >= usable:
            raise SpecError("layout.pool_gpus", f"pool GPU {gpu} ({gpu_type}) has no room "
                            "for KV after its workspace", "use larger GPUs for the pool")
        out.append(GpuMemory(gpu, gpu_type, capacity, usable, 0, workspace,
                             usable - workspace, kv_per_token))
    return out


def check_pool_fits(layout: FaPoolLayout, pool: list[GpuMemory], longest_tokens: int) -> None:
    """The longest sequence's block must fit on one pool GPU."""
    p = layout.pool_size_for(longest_tokens)
    if not p:
        return
    block = ceil(longest_tokens / p)
    tight = min(pool, key=lambda g: g.kv_tokens)
    if block > tight.kv_tokens:
        raise SpecError("layout.pool_gpus",
                        f"the longest sequence puts {block} tokens of KV on each of {p} pool "
                        f"GPUs, but GPU {tight.gpu} holds {tight.kv_tokens} "
                        f"({tight.kv_capacity_bytes / GIB:.1f} GiB)",
                        "add pool GPUs, use policy: all, or shorten the requests")


def pool_kv_blocks(pool: list[GpuMemory], block_tokens: int) -> int:
    """KV blocks of the whole pool (every pool GPU's tokens, in pages)."""
    return sum(g.kv_tokens for g in pool) // block_tokens
