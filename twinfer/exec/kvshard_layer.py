"""The `kv_sharded` layout in the executor: attention over a sequence-split KV cache.

Weights are tensor-parallel as in any TP stage (`twinfer.exec.tp`); the KV cache is
not split by heads but by sequence: token position p of every sequence is kept, with
all KV heads, by TP rank ``p % tp`` at local index ``p // tp`` (striping keeps the
shards even as sequences grow). Per layer (`KvShardedComm.attend`, reached from the
model's attention through its ``comm``):

1. all-gather the step's Q/K/V heads inside the TP group, packed into one tensor (every
   rank attends all heads);
2. store the K/V of the tokens this rank owns into its pages;
3. decode: partial attention over the keys it owns (the split-KV paged decode kernel,
   sequence length = the tokens owned), then the merge of all ranks' partials by LSE
   with the layout's exchange variant (`twinfer.exec.kvshard_comm`: ``allgather``,
   ``mpi``, or ``fused`` = symmetric-memory push + flag-waiting combine on GPUs);
   prompts: all of a prompt's keys are in its step, so each rank attends its own
   query heads over them (as in TP, the project's prefill kernel) and no exchange is
   needed;
4. keep this rank's query heads for the row-parallel output projection.

Pages are the driver's usual block tables, read at local indices (a local index is
never beyond the global one, so the table always covers it).
"""

from __future__ import annotations

import torch

from twinfer import kernels
from twinfer.exec.attention import AttentionInput
from twinfer.exec.kvshard_comm import (
    AllGatherAttention,
    CommContext,
    all_gather_single,
    make_attention,
)
from twinfer.exec.tp import TPComm, kv_heads_slice
from twinfer.spec import ModelSpec


class KvShardedComm:
    """A TP stage's communication (`TPComm`) plus the sequence-sharded attention."""

    def __init__(self, tp: TPComm, spec: ModelSpec, ctx: CommContext, comm: str,
                 device: torch.device) -> None:
        self.tp, self.spec, self.size = tp, spec, tp.size
        self.rank = torch.distributed.get_rank(ctx.group)
        self.prompts = AllGatherAttention(ctx)
        self.decodes = make_attention(comm, ctx, device)
        # gathered KV heads arrive in rank order; replicas (tp > kv_heads) are dropped
        firsts: dict[int, int] = {}
        for r in range(self.size):
            firsts.setdefault(kv_heads_slice(spec, self.size, r).start, r)
        per = kv_heads_slice(spec, self.size, 0).stop
        self._kv_take = [r * per + i for r in sorted(firsts.values()) for i in range(per)]

    def reduce(self, x: torch.Tensor) -> torch.Tensor:
        return self.tp.reduce(x)

    def gather_vocab(self, logits: torch.Tensor) -> torch.Tensor:
        return self.tp.gather_vocab(logits)

    def _heads(self, q: torch.Tensor, k: torch.Tensor,
               v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every rank's Q, K and V heads, in one all-gather (one collective per layer,
        not three): [tokens, local heads, D] each -> [tokens, size * local heads, D]
        in rank order, K and V without the replicas of tp > kv_heads."""
        if self.size == 1:
            return q, k, v
        tokens, hq, hk = q.shape[0], q.shape[1], k.shape[1]
        packed = torch.cat([q, k, v], dim=1)  # [tokens, hq + 2 hk, D]
        out = packed.new_empty((self.size * tokens, *packed.shape[1:]))
        all_gather_single(out, packed, group=self.tp.group)
        out = out.view(self.size, tokens, hq + 2 * hk, -1).transpose(0, 1)

        def heads(first: int, count: int) -> torch.Tensor:
            return out[:, :, first:first + count].reshape(tokens, self.size * count, -1)

        return (heads(0, hq), heads(hq, hk)[:, self._kv_take],
                heads(hq + hk, hk)[:, self._kv_take])

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, step: AttentionInput,
               pages: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """q [T, local heads, D], k/v [T, local KV heads, D] -> out [T, local heads, D]."""
        local_heads = q.shape[1]
        with self.tp.timer.comm():
            q_all, k_all, v_all = self._heads(q, k, v)
        pos = step.positions
        own = pos % self.size == self.rank
        local = pos // self.size
        page = pages[0].shape[1]
        if step.is_decode:
            block = step.block_table.long().gather(1, (local // page)[:, None])[:, 0]
            slots = torch.where(own, block * page + local % page, -1)
            kernels.paged_kv_append(pages[0], pages[1], k_all, v_all, slots)
            held = torch.clamp((step.seq_lens.long() - self.rank + self.size - 1) // self.size,
                               min=0).to(torch.int32)
            out, lse = kernels.paged_flash_decode(q_all, pages[0], pages[1], step.block_table,
                                                  held)
            with self.tp.timer.comm():
                out, _ = self.decodes.exchange(out, lse)
        else:
            # a prompt's keys are all in this step: every rank attends its own query
            # heads over them, as in TP (no exchange); only the cache write is split
            self._store_prompts(k_all, v_all, step, pages)
            out, _ = kernels.prefill_attention(q, k, v, step.cu_seqlens,
                                               max_seqlen=step.max_seqlen)
            return out
        first = self.rank * local_heads
        return out[:, first:first + local_heads]

    def _store_prompts(self, k: torch.Tensor, v: torch.Tensor, step: AttentionInput,
                       pages: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Prompts packed from position 0: store the K/V of the tokens this rank owns."""
        pos, size, rank = step.positions, self.size, self.rank
        page = pages[0].shape[1]
        own = pos % size == rank
        local = pos // size
        token = torch.arange(pos.shape[0], device=pos.device)
        seq = torch.searchsorted(step.cu_seqlens[1:].long(), token, right=True)
        start = step.cu_seqlens.long()[seq]
        # the page of local index l is the page of the prompt's token at position
        # (l // page) * page, whose global slot the plan carries
        src = start + (local // page) * page
        slots = torch.where(own, (step.slots[src] // page) * page + local % page, -1)
        kernels.paged_kv_append(pages[0], pages[1], k, v, slots)
