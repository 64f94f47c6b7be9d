"""The `fa_pool` layout in the executor: a base stage plus ranks that hold long
sequences' KV and attend over it.

FA Pool (seed 002): the base (one pipeline stage, any TP degree) runs embeddings,
projections, MLP and LM head for every sequence, and attention for the short ones over
its own paged cache. A sequence whose prompt is longer than the threshold (decided at
its prefill, re-decided if it is re-prefilled after a preemption) is pooled on
p = ``pool_size_for(prompt)`` pool ranks: pool rank j keeps the K/V of its positions
with ``position % p == j`` - ceil(n / p) tokens each, the paper's b = ceil(n / p)
blocks, striped so that the split stays even while the sequence grows. Every layer:

1. the base gathers its TP ranks' Q/K/V heads; its leader sends a header (MPI) and
   the pooled tokens' Q/K/V (a torch.distributed broadcast in the pool group:
   the base leader and the pool ranks);
2. each pool rank stores the K/V of the tokens it owns and attends the queries over
   its keys (`partial_attention` for prompts, the split-KV decode kernel for decode
   steps) -> partial output + LSE;
3. the partials are gathered to the base leader and merged by LSE
   (`twinfer.kernels.lse_combine`), then broadcast to the base TP group, whose ranks
   keep their heads for the row-parallel output projection.

The pool ranks run `PoolServer.serve` for as many workloads as the base serves; the
base leader ends each with a stop message. Pooled sequences' KV is released at the
end of each workload.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from twinfer import kernels
from twinfer.exec import attention
from twinfer.exec.attention import AttentionInput
from twinfer.exec.partial_attention import partial_attention
from twinfer.exec.tp import TPComm
from twinfer.spec import FaPoolLayout, ModelSpec

HEADER_TAG = 11


@dataclass(frozen=True)
class PoolLink:
    """The pool group: the base leader (rank ``leader``) and the pool ranks, in order."""

    layout: FaPoolLayout
    leader: int
    pool: tuple[int, ...]
    group: dist.ProcessGroup
    world: object  # MPI.COMM_WORLD (headers)

    @property
    def members(self) -> list[int]:
        return [self.leader, *self.pool]


def pool_link(layout: object, leader: int | None, world: object) -> PoolLink | None:
    """Collective over every rank: the pool group of an `fa_pool` layout, else None."""
    if not isinstance(layout, FaPoolLayout) or leader is None:
        return None
    members = [leader, *layout.pool_gpus]
    return PoolLink(layout, leader, tuple(layout.pool_gpus), dist.new_group(members), world)


def _pack(out: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    return torch.cat([out.reshape(-1, out.shape[-1]).float(), lse.reshape(-1, 1)], dim=1)


class FaPoolComm:
    """A base stage's communication (`TPComm`) plus the pool round trips."""

    def __init__(self, tp: TPComm, spec: ModelSpec, link: PoolLink, rank: int) -> None:
        self.tp, self.spec, self.link, self.rank = tp, spec, link, rank
        self.pooled: dict[int, int] = {}  # rid -> pool ranks its KV is striped over
        self.plan = None

    def reduce(self, x: torch.Tensor) -> torch.Tensor:
        return self.tp.reduce(x)

    def gather_vocab(self, logits: torch.Tensor) -> torch.Tensor:
        return self.tp.gather_vocab(logits)

    def begin_step(self, plan: object) -> None:
        """Before a step: which of its sequences are pooled (decided at prefill)."""
        self.plan = plan
        if plan.phase == "prefill":
            lengths = np.diff(plan.cu_seqlens)
            for rid, n in zip(plan.rids, lengths.tolist(), strict=True):
                self.pooled[rid] = self.link.layout.pool_size_for(int(n))

    def end_serve(self) -> None:
        """After a workload: the leader tells the pool ranks to stop serving it."""
        if self.rank == self.link.leader:
            for r in self.link.pool:
                self.link.world.send({"op": "stop"}, dest=r, tag=HEADER_TAG)
        self.pooled.clear()

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return x
        from twinfer.exec.kvshard_comm import all_gather_single

        out = x.new_empty((self.tp.size * x.shape[0], *x.shape[1:]))
        all_gather_single(out, x.contiguous(), group=self.tp.group)
        return out.view(self.tp.size, x.shape[0], *x.shape[1:]).transpose(0, 1).reshape(
            x.shape[0], -1, x.shape[-1])

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, step: AttentionInput,
               pages: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        plan = self.plan
        if step.is_decode:
            per_token = [self.pooled.get(rid, 0) for rid in plan.rids]
            seq_of = np.arange(len(plan.rids))
        else:
            lengths = np.diff(plan.cu_seqlens)
            seq_of = np.repeat(np.arange(len(plan.rids)), lengths)
            per_token = [self.pooled.get(plan.rids[s], 0) for s in seq_of]
        p_tok = np.asarray(per_token)
        if not p_tok.any():
            return _base_attention(q, k, v, step, pages)
        out = torch.empty_like(q)
        base = np.flatnonzero(p_tok == 0)
        if len(base):
            idx = torch.from_numpy(base).to(q.device)
            out[idx] = _base_attention(q[idx], k[idx], v[idx], _subset(step, base, seq_of),
                                       pages)
        pooled = np.flatnonzero(p_tok > 0)
        idx = torch.from_numpy(pooled).to(q.device)
        header = {"op": "attend", "decode": step.is_decode, "tokens": len(pooled),
                  "rids": [plan.rids[s] for s in seq_of[pooled]],
                  "p": p_tok[pooled].tolist(), "positions": plan.positions[pooled].tolist()}
        with self.tp.timer.comm():
            merged = self._round_trip(header, self._heads(q)[idx], self._heads(k)[idx],
                                      self._heads(v)[idx])
        first = (dist.get_rank(self.tp.group) if self.tp.size > 1 else 0) * q.shape[1]
        out[idx] = merged[:, first:first + q.shape[1]].to(q.dtype)
        return out

    def _round_trip(self, header: dict, q: torch.Tensor, k: torch.Tensor,
                    v: torch.Tensor) -> torch.Tensor:
        """Pooled tokens' Q/K/V out to the pool, the merged attention back (all heads)."""
        link = self.link
        tokens, heads, head_dim = q.shape
        merged = torch.empty((tokens, heads, head_dim), dtype=torch.float32, device=q.device)
        if self.rank == link.leader:
            for r in link.pool:
                link.world.send(header, dest=r, tag=HEADER_TAG)
            for x in (q, k, v):
                dist.broadcast(x.contiguous(), src=link.leader, group=link.group)
            mine = _pack(torch.zeros_like(q, dtype=torch.float32),
                         torch.full((tokens, heads), float("-inf"), device=q.device))
            parts = [torch.empty_like(mine) for _ in link.members]
            dist.gather(mine, parts, dst=link.leader, group=link.group)
            stacked = torch.stack(parts[1:]).view(len(link.pool), tokens, heads, head_dim + 1)
            out, _ = kernels.lse_combine(stacked[..., :head_dim].contiguous(),
                                         stacked[..., head_dim].contiguous())
            merged.copy_(out)
        if self.tp.size > 1:
            dist.broadcast(merged, src=link.leader, group=self.tp.group)
        return merged


def _base_attention(q, k, v, step: AttentionInput, pages) -> torch.Tensor:
    """The base's own paged-cache attention (the model's default path)."""
    if step.is_decode:
        return attention.decode(q, k, v, step, pages)
    return attention.prefill(q, k, v, step, pages)


def _subset(step: AttentionInput, rows: np.ndarray, seq_of: np.ndarray) -> AttentionInput:
    """The step input restricted to token ``rows`` (whole sequences of it)."""
    idx = torch.from_numpy(rows).to(step.positions.device)
    if step.is_decode:
        return AttentionInput(positions=step.positions[idx], slots=step.slots[idx],
                              block_table=step.block_table[idx], seq_lens=step.seq_lens[idx])
    seqs, counts = np.unique(seq_of[rows], return_counts=True)
    cu = torch.tensor(np.concatenate([[0], np.cumsum(counts)]), dtype=torch.int32,
                      device=step.positions.device)
    return AttentionInput(positions=step.positions[idx], slots=step.slots[idx],
                          cu_seqlens=cu, max_seqlen=int(counts.max()))


class PoolServer:
    """A pool rank: K/V of the pooled sequences' tokens it owns, attention over them."""

    def __init__(self, link: PoolLink, spec: ModelSpec, device: torch.device) -> None:
        self.link, self.spec, self.device = link, spec, device
        self.index = link.pool.index(dist.get_rank())
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(spec.dtype,
                                                                           torch.float32)
        self.store: dict[tuple[int, int], list[torch.Tensor]] = {}  # (rid, layer) -> [K, V]
        self.layer_calls = 0
        self.num_blocks = 0
        self.info = {"rank": dist.get_rank(), "pipeline": None, "idle": True, "role": "pool",
                     "pool_index": self.index, "attend_calls": 0, "tokens_attended": 0}

    def serve(self, seqs: object = None, opts: object = None) -> None:
        """Answer the base leader's layer calls until it says stop; returns no report."""
        link, spec = self.link, self.spec
        layers = spec.layers
        while True:
            header = link.world.recv(source=link.leader, tag=HEADER_TAG)
            if header["op"] == "stop":
                self.store.clear()
                self.layer_calls = 0
                return None
            layer = self.layer_calls % layers
            self.layer_calls += 1
            self.info["attend_calls"] += 1
            self.info["tokens_attended"] += header["tokens"]
            shapes = [(header["tokens"], spec.heads, spec.head_dim),
                      (header["tokens"], spec.kv_heads, spec.head_dim),
                      (header["tokens"], spec.kv_heads, spec.head_dim)]
            q, k, v = (torch.empty(s, dtype=self.dtype, device=self.device) for s in shapes)
            for x in (q, k, v):
                dist.broadcast(x, src=link.leader, group=link.group)
            out, lse = self._attend(header, layer, q, k, v)
            dist.gather(_pack(out, lse), None, dst=link.leader, group=link.group)

    def _attend(self, header: dict, layer: int, q: torch.Tensor, k: torch.Tensor,
                v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, heads, head_dim = q.shape
        out = torch.zeros((tokens, heads, head_dim), dtype=torch.float32, device=self.device)
        lse = torch.full((tokens, heads), float("-inf"), device=self.device)
        pos = torch.tensor(header["positions"], dtype=torch.int64, device=self.device)
        rids, ps = header["rids"], header["p"]
        start = 0
        while start < tokens:  # one sequence's tokens at a time (contiguous)
            stop = start + 1
            while stop < tokens and rids[stop] == rids[start] and not header["decode"]:
                stop += 1
            rid, p = rids[start], ps[start]
            if self.index < p:
                rows = slice(start, stop)
                if not header["decode"]:
                    self.store.pop((rid, layer), None)  # a (re-)prefill starts afresh
                mine = (pos[rows] % p == self.index).nonzero()[:, 0] + start
                keys = self._append((rid, layer), k[mine], v[mine], pos[mine])
                if header["decode"]:
                    kc, vc, n = keys
                    o, s = kernels.flash_decode(q[rows], kc[None], vc[None],
                                                torch.tensor([n], device=self.device))
                elif p == 1:  # every key is here: the prefill kernel, with its LSE
                    cu = torch.tensor([0, stop - start], dtype=torch.int32, device=self.device)
                    o, s = kernels.prefill_attention(q[rows], k[rows], v[rows], cu,
                                                     max_seqlen=stop - start, return_lse=True)
                else:
                    kc, vc, n = keys
                    kpos = self.store[(rid, layer)][2][:n]
                    o, s = partial_attention(q[rows], pos[rows], kc.transpose(0, 1)[:n],
                                             vc.transpose(0, 1)[:n], kpos)
                out[rows], lse[rows] = o.float(), s.float()
            start = stop
        return out, lse

    def _append(self, key: tuple[int, int], k: torch.Tensor, v: torch.Tensor,
                pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Append owned K/V ([n, kv_heads, D]) to the sequence's store (capacity doubles);
        returns K and V views [kv_heads, n_total, D] and n_total."""
        entry = self.store.get(key)
        if entry is None:
            cap = max(16, 2 * k.shape[0])
            shape = (self.spec.kv_heads, cap, self.spec.head_dim)
            entry = [torch.empty(shape, dtype=k.dtype, device=self.device),
                     torch.empty(shape, dtype=k.dtype, device=self.device),
                     torch.empty(cap, dtype=torch.int64, device=self.device), 0]
            self.store[key] = entry
        kc, vc, kpos, n = entry
        need = n + k.shape[0]
        if need > kc.shape[1]:
            grow = max(need, 2 * kc.shape[1])
            kc, vc = (torch.cat([c, c.new_empty((c.shape[0], grow - c.shape[1], c.shape[2]))],
                                dim=1) for c in (kc, vc))
            kpos = torch.cat([kpos, kpos.new_empty(grow - kpos.shape[0])])
        kc[:, n:need] = k.transpose(0, 1)
        vc[:, n:need] = v.transpose(0, 1)
        kpos[n:need] = pos
        self.store[key] = [kc, vc, kpos, need]
        return kc[:, :need], vc[:, :need], need
