"""The `fa_pool` layout in the executor: a base stage plus ranks that hold long
sequences' KV and attend over it.

FA Pool (seed 002): the base (one pipeline stage, any TP degree) runs embeddings,
projections, MLP and LM head for every sequence, and attention for the short ones over
its own paged cache. A sequence whose prompt is longer than the threshold (decided at
its prefill, re-decided if it is re-prefilled after a preemption) is pooled on
p = ``pool_size_for(prompt)`` pool ranks: pool rank j keeps the K/V of its positions
with ``position % p == j`` - ceil(n / p) tokens each, the paper's b = ceil(n / p)
blocks, striped so that the split stays even while the sequence grows.

Data path (built so that nothing inside the layer loop waits on the host):

- once per step, `FaPoolComm.begin_step` works out which of the plan's tokens are
  pooled (numpy), builds the device index tensors, and the base leader sends each
  pool rank one small MPI message (`StepHeader`: per pooled sequence its rid, p,
  first position and token count). The pool rank turns it into its own per-step
  tensors (`PoolStep`): slots in its paged cache (`twinfer.exec.kv_cache`, page
  numbers from its own `BlockAllocator`), a block table and local key counts per
  query row;
- every layer, ONE tensor goes base -> pool (q, k, v of the pooled tokens packed as
  [tokens, heads + 2 kv_heads, D], a broadcast in the pool group: the base leader
  and the pool ranks), each pool rank makes ONE attention call, and ONE tensor comes
  back from each pool rank (out and LSE packed as fp32 [tokens, heads, D + 1], a
  gather to the base leader). The partials of p > 1 pool ranks are merged by LSE
  (`twinfer.kernels.lse_combine`); the base attends over none of a pooled
  sequence's keys, so there is no base partial to merge.
- the pool's attention call: a prompt step whose sequences all have p = 1 runs on
  pool rank 0 as `prefill_attention` (writing the pages through ``slot_mapping`` and
  returning the LSE); every other step appends the owned K/V (`paged_kv_append`) and
  runs `paged_flash_decode` with one row per query token, whose local key count
  (``(position - j) // p + 1``) is exactly the causal mask over the striped keys.
- base TP > 1: the TP ranks all-gather their packed heads (one TP collective), the
  leader alone talks to the pool, and broadcasts the merged output back to the TP
  group, where each rank keeps its heads. (Each TP rank exchanging its own head
  slice over its own pair group would save the two TP collectives; TP=1, the
  validated case, has none.)

Paper estimate for `scenarios/fa_pool_h200_base1_pool1.yaml` (Llama-3-8B: 32 layers,
32 heads, 8 KV heads, D = 128, bf16; 8 sequences of 4096 + 128 tokens, all pooled on
one pool GPU; NVLink ~300 GB/s, ~25 us per message):

- decode step, per layer: out 8 x (32 + 16) x 128 x 2 B = 98 KB (0.33 us), back
  8 x 32 x 129 x 4 B = 132 KB (0.44 us), 2 messages: ~51 us; x 32 layers = 1.6 ms.
  Pool attention per layer reads 8 x 4224 x 8 x 128 x 2 x 2 B = 138 MB of KV: ~35 us
  at ~4 TB/s, 1.1 ms per step, serial with the base (which waits for it). The base
  (weights 16 GB at ~4.8 TB/s, no attention, eager) ~4-6 ms. Expected TPOT ~7-9 ms
  (twin 12 ms; measured 105 ms before this data path), of which ~2.7 ms is the pool.
- prefill of the 8 prompts (32768 tokens, if the scheduler batches them), per layer:
  out 32768 x 48 x 128 x 2 B = 403 MB (1.3 ms), back 32768 x 32 x 129 x 4 B = 541 MB
  (1.8 ms): ~100 ms over 32 layers, plus the pool's causal attention (~1.1 TFLOP per
  layer, ~3 ms) ~90 ms, against the base's ~0.5 PFLOP of GEMMs (~0.9 s). Expected
  TTFT of the last prompt ~1.1 s (the twin's 0.6 s assumes less GEMM time).

The pool ranks run `PoolServer.serve` for as many workloads as the base serves; the
base leader ends each with a stop message. Pooled sequences' pages are released when
the sequence is re-prefilled and at the end of each workload.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from math import ceil

import numpy as np
import torch
import torch.distributed as dist

from twinfer import kernels
from twinfer.exec import attention
from twinfer.exec.attention import AttentionInput
from twinfer.exec.control import CPU_POLL_S
from twinfer.exec.kv_cache import (
    CPU_BUDGET_BYTES,
    BlockAllocator,
    CacheShape,
    KVCache,
    OutOfPages,
    blocks_for_budget,
    gpu_budget_bytes,
)
from twinfer.exec.tp import TPComm
from twinfer.spec import FaPoolLayout, ModelSpec

HEADER_TAG = 11
POOL_KV_FRACTION = 0.9  # of the pool GPU's KV budget: room for the attention workspace


@dataclass(frozen=True)
class PoolLink:
    """The pool group: the base leader (rank ``leader``) and the pool ranks, in order."""

    layout: FaPoolLayout
    leader: int
    pool: tuple[int, ...]
    group: dist.ProcessGroup
    world: object  # MPI.COMM_WORLD (step headers)

    @property
    def members(self) -> list[int]:
        return [self.leader, *self.pool]


def pool_link(layout: object, leader: int | None, world: object) -> PoolLink | None:
    """Collective over every rank: the pool group of an `fa_pool` layout, else None."""
    if not isinstance(layout, FaPoolLayout) or leader is None:
        return None
    members = [leader, *layout.pool_gpus]
    return PoolLink(layout, leader, tuple(layout.pool_gpus), dist.new_group(members), world)


@dataclass(frozen=True)
class StepHeader:
    """What a pool rank needs of one step (one MPI message per step, not per layer).

    The pooled tokens are packed in this order in every layer's message; sequence i
    has ``count[i]`` tokens at positions ``start[i]``, ``start[i] + 1``, ...
    """

    decode: bool
    rids: list[int]
    p: list[int]  # pool ranks each sequence is striped over
    start: list[int]  # position of its first token in this step
    count: list[int]  # its tokens in this step

    @property
    def tokens(self) -> int:
        return sum(self.count)


class FaPoolComm:
    """A base stage's communication (`TPComm`) plus the pool round trips."""

    def __init__(self, tp: TPComm, spec: ModelSpec, link: PoolLink, rank: int,
                 device: torch.device) -> None:
        self.tp, self.spec, self.link, self.rank, self.device = tp, spec, link, rank, device
        self.pooled: dict[int, int] = {}  # rid -> pool ranks its KV is striped over
        self._step: dict | None = None  # this step's index tensors and buffers

    def reduce(self, x: torch.Tensor) -> torch.Tensor:
        return self.tp.reduce(x)

    def gather_vocab(self, logits: torch.Tensor) -> torch.Tensor:
        return self.tp.gather_vocab(logits)

    def begin_step(self, plan: object) -> None:
        """Before a step: which of its tokens are pooled, as device index tensors, and
        (base leader) the step header to every pool rank."""
        decode = plan.phase == "decode"
        counts = np.ones(len(plan.rids), np.int64) if decode else np.diff(plan.cu_seqlens)
        if not decode:
            for rid, n in zip(plan.rids, counts.tolist(), strict=True):
                self.pooled[rid] = self.link.layout.pool_size_for(int(n))
        p_seq = np.array([self.pooled.get(rid, 0) for rid in plan.rids], np.int64)
        self._step = None
        if not p_seq.any():
            return
        seq_of = np.repeat(np.arange(len(plan.rids)), counts)
        pooled_rows = np.flatnonzero(p_seq[seq_of] > 0)
        base_rows = np.flatnonzero(p_seq[seq_of] == 0)
        dev = self.device
        pooled_seqs = np.flatnonzero(p_seq > 0)
        starts = np.cumsum(np.concatenate([[0], counts]))[pooled_seqs]
        header = StepHeader(decode, [plan.rids[s] for s in pooled_seqs],
                            p_seq[pooled_seqs].tolist(),
                            plan.positions[starts].tolist(), counts[pooled_seqs].tolist())
        self._step = {"plan": plan, "seq_of": seq_of, "base_rows": base_rows,
                      "pooled": torch.from_numpy(pooled_rows).to(dev),
                      "base": torch.from_numpy(base_rows).to(dev) if len(base_rows) else None,
                      "base_input": None, "header": header}
        if self.rank == self.link.leader:
            for r in self.link.pool:
                self.link.world.send(header, dest=r, tag=HEADER_TAG)

    def end_serve(self) -> None:
        """After a workload: the leader tells the pool ranks to stop serving it."""
        if self.rank == self.link.leader:
            for r in self.link.pool:
                self.link.world.send(None, dest=r, tag=HEADER_TAG)
        self.pooled.clear()
        self._step = None

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, step: AttentionInput,
               pages: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        st = self._step
        if st is None:
            return _base_attention(q, k, v, step, pages)
        out = torch.empty_like(q)
        if st["base"] is not None:
            if st["base_input"] is None:  # once per step, at the first layer
                st["base_input"] = _subset(step, st["base"], st["base_rows"], st["seq_of"])
            idx = st["base"]
            out[idx] = _base_attention(q[idx], k[idx], v[idx], st["base_input"], pages)
        idx = st["pooled"]
        # [pooled tokens, heads + 2 kv_heads, D]: this rank's heads
        packed = torch.cat([q[idx], k[idx], v[idx]], dim=1)
        with self.tp.timer.comm():
            merged = self._round_trip(self._all_heads(packed, q.shape[1], k.shape[1]))
        first = (dist.get_rank(self.tp.group) if self.tp.size > 1 else 0) * q.shape[1]
        out[idx] = merged[:, first:first + q.shape[1]].to(q.dtype)
        return out

    def _all_heads(self, packed: torch.Tensor, heads: int, kv_heads: int) -> torch.Tensor:
        """Every TP rank's packed heads -> [tokens, H + 2 KV, D] in head order (TP > 1:
        one all-gather in the TP group)."""
        if self.tp.size == 1:
            return packed
        from twinfer.exec.kvshard_comm import all_gather_single

        tokens = packed.shape[0]
        out = packed.new_empty((self.tp.size * tokens, *packed.shape[1:]))
        all_gather_single(out, packed.contiguous(), group=self.tp.group)
        ranks = out.view(self.tp.size, tokens, *packed.shape[1:])
        parts = ranks.split([heads, kv_heads, kv_heads], dim=2)
        return torch.cat([x.transpose(0, 1).reshape(tokens, -1, packed.shape[-1])
                          for x in parts], dim=1)

    def _round_trip(self, packed: torch.Tensor) -> torch.Tensor:
        """The packed q/k/v out to the pool (one message), out + LSE back (one message
        from each pool rank), merged: fp32 [tokens, heads, D], on every TP rank."""
        link, spec = self.link, self.spec
        tokens, head_dim = packed.shape[0], packed.shape[-1]
        st = self._step
        if "reply" not in st:  # once per step
            st["reply"] = torch.empty((len(link.members), tokens, spec.heads, head_dim + 1),
                                      dtype=torch.float32, device=packed.device)
            st["merged"] = torch.empty((tokens, spec.heads, head_dim), dtype=torch.float32,
                                       device=packed.device)
        reply, merged = st["reply"], st["merged"]
        if self.rank == link.leader:
            dist.broadcast(packed.contiguous(), src=link.leader, group=link.group)
            dist.gather(reply[0], list(reply.unbind(0)), dst=link.leader, group=link.group)
            parts = reply[1:]
            if len(link.pool) == 1:
                merged.copy_(parts[0, ..., :head_dim])
            else:
                out, _ = kernels.lse_combine(parts[..., :head_dim].contiguous(),
                                             parts[..., head_dim].contiguous())
                merged.copy_(out)
        if self.tp.size > 1:
            dist.broadcast(merged, src=link.leader, group=self.tp.group)
        return merged


def _base_attention(q, k, v, step: AttentionInput, pages) -> torch.Tensor:
    """The base's own paged-cache attention (the model's default path)."""
    if step.is_decode:
        return attention.decode(q, k, v, step, pages)
    return attention.prefill(q, k, v, step, pages)


def _subset(step: AttentionInput, idx: torch.Tensor, rows: np.ndarray,
            seq_of: np.ndarray) -> AttentionInput:
    """The step input restricted to token ``rows`` (whole sequences of it); ``idx`` is
    ``rows`` on the device."""
    if step.is_decode:
        return AttentionInput(positions=step.positions[idx], slots=step.slots[idx],
                              block_table=step.block_table[idx], seq_lens=step.seq_lens[idx])
    _, counts = np.unique(seq_of[rows], return_counts=True)
    cu = torch.tensor(np.concatenate([[0], np.cumsum(counts)]), dtype=torch.int32,
                      device=step.positions.device)
    return AttentionInput(positions=step.positions[idx], slots=step.slots[idx],
                          cu_seqlens=cu, max_seqlen=int(counts.max()))


@dataclass
class PoolStep:
    """A pool rank's device tensors for one step (built once, used by every layer)."""

    tokens: int
    prefill: bool  # True: `prefill_attention` over the whole step (all p = 1, rank 0)
    slots: torch.Tensor  # int64 [tokens]: page slot of the tokens this rank owns, else -1
    cu_seqlens: torch.Tensor | None  # int32 [n + 1] (prefill)
    max_seqlen: int
    block_table: torch.Tensor | None  # int32 [tokens, max_blocks] (paged decode)
    key_counts: torch.Tensor | None  # int32 [tokens]: owned keys each query sees
    empty: torch.Tensor | None  # bool [tokens]: queries with no key here


class PoolServer:
    """A pool rank: a paged cache of the pooled tokens it owns, attention over them."""

    def __init__(self, link: PoolLink, spec: ModelSpec, device: torch.device,
                 page_size: int = 16, gpu_memory_utilization: float = 0.9) -> None:
        self.link, self.spec, self.device = link, spec, device
        self.index = link.pool.index(dist.get_rank())
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(spec.dtype,
                                                                           torch.float32)
        self.page_size = page_size
        shape = CacheShape(range(spec.layers), page_size, spec.kv_heads, spec.head_dim,
                           self.dtype)
        if device.type == "cuda":
            budget = int(POOL_KV_FRACTION * gpu_budget_bytes(device, gpu_memory_utilization,
                                                              0)[0])
        else:
            budget = CPU_BUDGET_BYTES
        self.cache = KVCache(shape, max(1, blocks_for_budget(shape, budget)), device)
        self.allocator = BlockAllocator(self.cache.num_blocks)
        self.tables: dict[int, list[int]] = {}  # rid -> its pages here
        self.poll_s = 0.0 if device.type == "cuda" else CPU_POLL_S
        self.info = {"rank": dist.get_rank(), "pipeline": None, "idle": True, "role": "pool",
                     "pool_index": self.index, "num_blocks": self.cache.num_blocks,
                     "attend_calls": 0, "tokens_attended": 0, "step_headers": 0,
                     "layer_messages_in": 0, "layer_messages_out": 0}

    def serve(self, seqs: object = None, opts: object = None) -> None:
        """Answer the base leader's steps until it says stop; returns no report."""
        link, spec = self.link, self.spec
        width = spec.heads + 2 * spec.kv_heads
        while (header := self._recv_header()) is not None:
            self.info["step_headers"] += 1
            step = self._plan(header)
            packed = torch.empty((step.tokens, width, spec.head_dim), dtype=self.dtype,
                                 device=self.device)
            reply = torch.empty((step.tokens, spec.heads, spec.head_dim + 1),
                                dtype=torch.float32, device=self.device)
            for layer in range(spec.layers):
                dist.broadcast(packed, src=link.leader, group=link.group)
                self.info["layer_messages_in"] += 1
                self._attend(step, layer, packed, reply)
                dist.gather(reply, None, dst=link.leader, group=link.group)
                self.info["layer_messages_out"] += 1
            self.info["attend_calls"] += spec.layers
            self.info["tokens_attended"] += step.tokens * spec.layers
        self.allocator = BlockAllocator(self.cache.num_blocks)
        self.tables.clear()
        return None

    def _recv_header(self) -> StepHeader | None:
        world, leader = self.link.world, self.link.leader
        while not world.iprobe(source=leader, tag=HEADER_TAG):
            if self.poll_s:
                time.sleep(self.poll_s)
        return world.recv(source=leader, tag=HEADER_TAG)

    def _plan(self, header: StepHeader) -> PoolStep:
        """The step's slots, block tables and key counts on this rank (host work once
        per step; pages for the owned tokens allocated here)."""
        j, page = self.index, self.page_size
        slots, tables, counts = [], [], []
        for rid, p, start, n in zip(header.rids, header.p, header.start, header.count,
                                    strict=True):
            pos = start + np.arange(n, dtype=np.int64)
            if j >= p:  # striped over fewer ranks: nothing of it here
                slots.append(np.full(n, -1, np.int64))
                counts.append(np.zeros(n, np.int64))
                tables.append((n, []))
                continue
            if not header.decode:  # a (re-)prefill starts afresh
                self.allocator.release(self.tables.pop(rid, []))
            table = self.tables.setdefault(rid, [])
            local = (pos - j) // p  # local index of an owned key; for a query, the last seen
            need = ceil(max(int(local[-1]) + 1, 0) / page)
            if need > len(table):
                try:
                    table.extend(self.allocator.allocate(need - len(table)))
                except OutOfPages as exc:
                    raise OutOfPages(f"pool rank {j}: {exc} ({self.cache.num_blocks} pages "
                                     "of pooled KV)") from exc
            owned = (pos % p) == j
            pages = np.asarray(table, np.int64)
            slot = np.full(n, -1, np.int64)
            slot[owned] = pages[local[owned] // page] * page + local[owned] % page
            slots.append(slot)
            counts.append(np.where(pos >= j, local + 1, 0))
            tables.append((n, table))
        dev = self.device
        slot_t = torch.from_numpy(np.concatenate(slots)).to(dev)
        if (not header.decode and j == 0 and all(p == 1 for p in header.p)
                and not any(header.start)):  # whole prompts, every key on this rank
            cu = np.concatenate([[0], np.cumsum(header.count)]).astype(np.int32)
            return PoolStep(header.tokens, True, slot_t, torch.from_numpy(cu).to(dev),
                            max(header.count), None, None, None)
        width = max([len(t) for _, t in tables] + [1])
        block_table = np.zeros((header.tokens, width), np.int32)
        row = 0
        for n, table in tables:
            block_table[row:row + n, :len(table)] = table
            row += n
        key_counts = np.concatenate(counts).astype(np.int32)
        return PoolStep(header.tokens, False, slot_t, None, 0,
                        torch.from_numpy(block_table).to(dev),
                        torch.from_numpy(key_counts).to(dev),
                        torch.from_numpy(key_counts == 0).to(dev))

    def _attend(self, step: PoolStep, layer: int, packed: torch.Tensor,
                reply: torch.Tensor) -> None:
        """One layer: store the owned K/V, attend every query over this rank's keys;
        out and LSE into ``reply`` [tokens, heads, D + 1] (empty rows: 0, -inf)."""
        spec = self.spec
        q, k, v = packed.split([spec.heads, spec.kv_heads, spec.kv_heads], dim=1)
        k_pages, v_pages = self.cache.pages(layer)
        if step.prefill:
            out, lse = kernels.prefill_attention(
                q.contiguous(), k.contiguous(), v.contiguous(), step.cu_seqlens,
                max_seqlen=step.max_seqlen, return_lse=True, k_pages=k_pages, v_pages=v_pages,
                slot_mapping=step.slots)
        else:
            kernels.paged_kv_append(k_pages, v_pages, k, v, step.slots)
            out, lse = kernels.paged_flash_decode(q.contiguous(), k_pages, v_pages,
                                                  step.block_table, step.key_counts)
            out = out.masked_fill(step.empty[:, None, None], 0.0)
            lse = lse.masked_fill(step.empty[:, None], float("-inf"))
        reply[..., :spec.head_dim].copy_(out)
        reply[..., spec.head_dim].copy_(lse)
