"""Tensor parallelism, applied from this one place (Megatron-LM's scheme).

Within a pipeline stage of ``tp`` ranks, rank r holds:

- attention: query heads ``[r * heads/tp, (r+1) * heads/tp)`` of ``q_proj`` (column
  parallel) and the matching columns of ``o_proj`` (row parallel, all-reduce after);
  KV heads split the same way, or - when tp > kv_heads - replicated: rank r keeps KV
  head ``r // (tp / kv_heads)``, exactly the one its query heads read (GQA group);
- MLP: a contiguous share of the ``ffn_hidden`` columns of gate/up (column parallel)
  and the matching columns of ``down_proj`` (row parallel, all-reduce after); shares
  differ by at most one column when tp does not divide ffn_hidden;
- the LM head: ``ceil(vocab / tp)`` vocabulary rows (zero-padded on the last rank),
  then an all-gather of the logits, so sampling sees the whole distribution;
- the embedding: replicated. A vocab-parallel embedding would save ``vocab * hidden``
  bytes per rank (1 GB for Llama-3-8B in bf16) but cost an all-reduce of every step's
  hidden states on the latency-critical decode path; replication costs no
  communication and about 1% of an 80 GB GPU.

`TPComm` is the stage's communication: the two all-reduces per layer and the logits
all-gather, each timed as communication by the step timer.
"""

from __future__ import annotations

from math import ceil

import torch
import torch.distributed as dist

from twinfer.exec.model import Part
from twinfer.exec.symm_allreduce import SymmAllReduce
from twinfer.exec.timing import StepTimer
from twinfer.exec.weights import WeightSource
from twinfer.spec import ModelSpec, StagePlan


def share(total: int, parts: int, rank: int) -> slice:
    """Rank's contiguous share of ``total`` items split as evenly as possible."""
    base, rem = divmod(total, parts)
    start = rank * base + min(rank, rem)
    return slice(start, start + base + (1 if rank < rem else 0))


def kv_heads_slice(spec: ModelSpec, tp: int, rank: int) -> slice:
    """KV heads a TP rank holds: a split, or one replicated head when tp > kv_heads."""
    if tp <= spec.kv_heads:
        per = spec.kv_heads // tp
        return slice(rank * per, (rank + 1) * per)
    head = rank // (tp // spec.kv_heads)
    return slice(head, head + 1)


def part_for(spec: ModelSpec, stage: StagePlan, tp_rank: int) -> Part:
    """The `Part` of TP rank ``tp_rank`` in ``stage`` (local sizes and layer range)."""
    tp = stage.tp
    kv = kv_heads_slice(spec, tp, tp_rank)
    ffn = share(spec.ffn_hidden, tp, tp_rank)
    return Part(layers=stage.layers, heads=spec.heads // tp, kv_heads=kv.stop - kv.start,
                ffn=ffn.stop - ffn.start, vocab_rows=ceil(spec.vocab / tp),
                embed=stage.first_layer == 0,
                head=stage.first_layer + stage.num_layers == spec.layers)


def _rows(head_slice: slice, head_dim: int) -> slice:
    return slice(head_slice.start * head_dim, head_slice.stop * head_dim)


def shard_state(spec: ModelSpec, part: Part, tp: tuple[int, int],
                source: WeightSource) -> dict[str, torch.Tensor]:
    """This rank's tensors, keyed like `Transformer.state_dict()`.

    ``tp`` is (rank in the stage, stage size). Q/K/V rows are concatenated into one
    ``qkv_proj`` and gate/up into one ``up_proj``: one GEMM each instead of three/two.
    """
    rank, size = tp
    d, everything = spec.head_dim, slice(None)
    q_rows = _rows(slice(rank * part.heads, (rank + 1) * part.heads), d)
    kv_rows = _rows(kv_heads_slice(spec, size, rank), d)
    ffn = share(spec.ffn_hidden, size, rank)
    state: dict[str, torch.Tensor] = {}
    if part.embed:
        state["embed_tokens.weight"] = source.read("model.embed_tokens.weight")
    for i in part.layers:
        hf, mine = f"model.layers.{i}.", f"layers.{i}."
        for norm in ("input_layernorm", "post_attention_layernorm"):
            state[mine + norm + ".weight"] = source.read(hf + norm + ".weight")
        state[mine + "self_attn.qkv_proj.weight"] = torch.cat([
            source.read(hf + "self_attn.q_proj.weight", (q_rows,)),
            source.read(hf + "self_attn.k_proj.weight", (kv_rows,)),
            source.read(hf + "self_attn.v_proj.weight", (kv_rows,)),
        ])
        state[mine + "self_attn.o_proj.weight"] = source.read(
            hf + "self_attn.o_proj.weight", (everything, q_rows))
        ups = (["gate_proj"] if spec.ffn_kind == "swiglu" else []) + ["up_proj"]
        state[mine + "mlp.up_proj.weight"] = torch.cat(
            [source.read(hf + f"mlp.{u}.weight", (ffn,)) for u in ups])
        state[mine + "mlp.down_proj.weight"] = source.read(
            hf + "mlp.down_proj.weight", (everything, ffn))
    if part.head:
        state["norm.weight"] = source.read("model.norm.weight")
        vocab = slice(min(spec.vocab, rank * part.vocab_rows),
                      min(spec.vocab, (rank + 1) * part.vocab_rows))
        head = source.read("lm_head.weight", (vocab,))
        pad = part.vocab_rows - head.shape[0]
        if pad:  # the last rank's rows past the vocabulary give logits nobody reads
            head = torch.cat([head, head.new_zeros(pad, spec.hidden)])
        state["lm_head.weight"] = head
    return state


class TPComm:
    """The collectives of one TP group, each timed as communication."""

    def __init__(self, group: dist.ProcessGroup | None, size: int, timer: StepTimer,
                 oneshot: SymmAllReduce | None = None) -> None:
        self.group, self.size, self.timer = group, size, timer
        self.oneshot = oneshot

    def reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum the row-parallel partial outputs. x: [tokens, hidden]. Small messages go
        through the one-shot symmetric-memory kernel when the group has it (a new
        tensor), the rest through NCCL in place."""
        if self.size > 1:
            with self.timer.comm():
                if self.oneshot is not None and self.oneshot.fits(x):
                    return self.oneshot(x)
                dist.all_reduce(x, group=self.group)
        return x

    def describe(self) -> str:
        if self.size == 1:
            return "none (one GPU per stage)"
        return self.oneshot.describe() if self.oneshot else "NCCL"

    def gather_vocab(self, logits: torch.Tensor) -> torch.Tensor:
        """[rows, vocab_rows] per rank -> [rows, size * vocab_rows], rank order."""
        if self.size == 1:
            return logits
        rows, local = logits.shape
        out = logits.new_empty(self.size * rows, local)  # [size * rows, vocab_rows]
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        with self.timer.comm():
            gather(out, logits.contiguous(), group=self.group)
        return out.view(self.size, rows, local).transpose(0, 1).reshape(rows, -1)
