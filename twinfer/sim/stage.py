"""A pipeline stage's work on one micro-batch step, summed from the cost model.

An engine event is a stage's whole step, not a kernel (so sweeps stay fast): the
time of every layer's GEMMs, attention, element-wise ops and tensor-parallel
collectives for the step's batch composition. The batch composition is what
iteration-level scheduling (Orca, Yu et al. 2022; vLLM) produces each step:
``decode_n`` sequences decoding one token each over ``decode_ctx_sum`` KV tokens in
all, plus prompt chunks (Sarathi-style chunked prefill) of ``c`` new tokens after
``p`` cached ones.

Per layer, on each GPU of a TP group of ``tp`` (Megatron column/row parallel):
RMSNorm, QKV GEMM ``[m, hidden] x [hidden, qkv_n]``, RoPE, KV-cache write,
attention, output GEMM ``[m, q_dim/tp] x [q_dim/tp, hidden]``, all-reduce, residual
add, RMSNorm, gate/up GEMM, activation, down GEMM, all-reduce, residual add. The first
stage adds the embedding (replicated on every TP rank, as the executor holds it); the last adds the
final norm, the LM head for the sequences that sample, the logits all-gather and
sampling. Pipeline stages hand the hidden states on with a send/recv; when TP
degrees differ (HexGen), the receiving leader broadcasts them inside its group.
"""

from __future__ import annotations

from dataclasses import dataclass

from twinfer.sim.cost import CostModel
from twinfer.sim.memory import LOGIT_BYTES
from twinfer.sim.shard import ShardShape
from twinfer.spec.model import ModelSpec


@dataclass(frozen=True, slots=True)
class StepBatch:
    """The composition of one micro-batch step."""

    decode_n: int  # sequences decoding one token
    decode_ctx_sum: int  # KV tokens those sequences attend over, summed
    chunks: tuple[tuple[int, int], ...] = ()  # (new prompt tokens, cached tokens before)
    prefill_tokens: int = 0  # sum of the chunks' new tokens
    logits_n: int = 0  # sequences sampling a token: decodes + prompts completed now

    @property
    def tokens(self) -> int:
        return self.decode_n + self.prefill_tokens


@dataclass(frozen=True)
class StageSpec:
    """What a stage is: its layers, TP group, link and place in the pipeline."""

    model: ModelSpec
    tp: int
    num_layers: int
    link: str  # link kind inside the TP group
    first: bool
    last: bool


class StageCost:
    """Time of one stage's step: ``step(batch) -> (time_s, comm_s)``."""

    graph_decode = True  # the executor replays this layout's decode steps from CUDA graphs

    def __init__(self, spec: StageSpec, cost: CostModel) -> None:
        self.spec = spec
        self.cost = cost
        self.shard = ShardShape.of(spec.model, spec.tp)
        overheads = cost.profile.overheads
        # the host's per-step work is the driver's: the last stage's leader. The
        # follower term is what TP peers add (fitted from TP runs: every layer's
        # collectives wait for the peers' launches); what earlier pipeline stages add
        # is a delay of the step, not stage time (PipelineModel.lead_s)
        followers = spec.tp > 1
        self.fixed_s = overheads.fixed_s(spec.num_layers, spec.last, False, followers)
        self.prefill_fixed_s = overheads.fixed_s(spec.num_layers, spec.last, True, followers)
        self.seq_s = overheads.seq_s if spec.last else 0.0  # the driver's, per sequence
        self.comm_kept = 1.0 - overheads.comm_overlap
        self.graphs = overheads.cuda_graphs
        self.eager_floor_s = overheads.eager_floor_s(spec.num_layers, spec.tp)
        self.prefill_floor_s = overheads.eager_floor_s(spec.num_layers, spec.tp, prefill=True)
        self._dense: dict[tuple[int, bool], tuple[float, float]] = {}
        self._head: dict[tuple[int, bool], tuple[float, float]] = {}
        self._chunk: dict[tuple[int, int], float] = {}

    def step(self, batch: StepBatch) -> tuple[float, float]:
        """(time_s, comm_s) of this stage's work on ``batch``; comm_s is part of time_s.
        An eager step takes at least the host's time to launch it (``eager_floor_s`` for
        decode without graphs, ``prefill_floor_s`` for prefill) plus what the GPU runs
        after the last launch (``tail_s``)."""
        graphed = self.graphed(batch)
        time_s, comm_s = self.device_step(batch, graphed)
        if not graphed:
            floor = self.prefill_floor_s if batch.prefill_tokens else self.eager_floor_s
            if floor:
                time_s = max(time_s, floor + self.tail_s(batch))
        # per_layer_s may be negative (graph replay undercuts the sweeps' launch-bound
        # floors): a correction to the kernels, never below zero for an empty step
        return max(0.0, time_s + self.fixed_of(batch)), comm_s

    def tail_s(self, batch: StepBatch) -> float:
        """What the GPU still runs after a host-paced step's last launch: the LM head,
        its gather and sampling, on the stage that samples (launched last, they start
        when it lands). A one-GPU prefill on an H100 ended 0.22-0.25 ms after its host's
        last launch, the LM head of one token being 0.34 ms (docs/VALIDATION.md)."""
        if not self.spec.last or not batch.logits_n:
            return 0.0
        return self._head_of(batch.logits_n, self.graphed(batch))[0]

    def _head_of(self, n: int, graphed: bool) -> tuple[float, float]:
        """``_lm_head_s``, cached."""
        head = self._head.get((n, graphed))
        if head is None:
            head = self._head[(n, graphed)] = self._lm_head_s(n, graphed)
        return head

    def graphed(self, batch: StepBatch) -> bool:
        """A pure decode step replays a CUDA graph where the executor captures them."""
        return self.graphs and self.graph_decode and not batch.prefill_tokens

    def kernels_s(self, batch: StepBatch) -> float:
        """The step's device time alone: no fixed overheads, no host floor."""
        return self.device_step(batch, self.graphed(batch))[0]

    def device_step(self, batch: StepBatch, graphed: bool) -> tuple[float, float]:
        """(time_s, comm_s) of the step's kernels and collectives, no host terms."""
        dense = self._dense.get((batch.tokens, graphed))
        if dense is None:
            dense = self._dense[(batch.tokens, graphed)] = self._dense_s(batch.tokens, graphed)
        time_s, comm_s = dense
        if self.spec.last:
            head = self._head_of(batch.logits_n, graphed)
            time_s += head[0]
            comm_s += head[1]
        return time_s + self.attention_s(batch), comm_s

    def fixed_of(self, batch: StepBatch) -> float:
        """The profile's fixed overheads for this step: a step carrying prompt tokens
        runs eager (the prefill overhead), a pure decode step replays a graph; the driver
        also spends ``seq_s`` per sequence of the step."""
        fixed = self.prefill_fixed_s if batch.prefill_tokens else self.fixed_s
        return fixed + self.seq_s * batch.logits_n

    def attention_s(self, batch: StepBatch) -> float:
        """All layers' attention: decodes over their contexts plus the prompt chunks."""
        sh = self.shard
        per_layer = 0.0
        if batch.decode_n:
            per_layer = self.cost.decode_attention_s(
                batch.decode_n, batch.decode_ctx_sum / batch.decode_n, sh.q_heads, sh.kv_heads,
                sh.head_dim)
        for chunk in batch.chunks:
            t = self._chunk.get(chunk)
            if t is None:
                t = self._chunk[chunk] = self.cost.prefill_chunk_s(
                    chunk[0], chunk[1], sh.q_heads, sh.kv_heads, sh.head_dim)
            per_layer += t
        return per_layer * self.spec.num_layers

    def _dense_s(self, m: int, graphed: bool = False) -> tuple[float, float]:
        """Everything but attention and the LM head, for ``m`` tokens: (time, comm)."""
        if m == 0:
            return 0.0, 0.0
        c, sh, spec = self.cost, self.shard, self.spec
        db, h = sh.dtype_bytes, sh.hidden
        act = m * h * db  # one [m, hidden] activation
        norm = c.elementwise_s(2 * act)
        add = c.elementwise_s(3 * act)
        rope = c.elementwise_s(2 * m * (sh.q_dim + sh.kv_dim) * db)
        kv_write = c.elementwise_s(2 * m * 2 * sh.kv_dim * db)
        mlp_act = c.elementwise_s(m * sh.ffn * db * (3 if sh.swiglu else 2))
        gemms = (c.gemm_s(m, sh.qkv_n, h) + c.gemm_s(m, h, sh.q_dim)
                 + c.gemm_s(m, sh.up_n, h) + c.gemm_s(m, h, sh.ffn))
        all_reduce = c.collective_s("all_reduce", act, spec.tp, spec.link,
                                    graphed) * self.comm_kept
        layer_comm = 2 * all_reduce
        layer = 2 * norm + 2 * add + rope + kv_write + mlp_act + gemms + layer_comm
        time_s, comm_s = layer * spec.num_layers, layer_comm * spec.num_layers
        if spec.first:  # embedding gather (replicated on every TP rank: no all-reduce)
            time_s += c.elementwise_s(2 * act)
        if spec.last:
            time_s += norm
        return time_s, comm_s

    def _lm_head_s(self, n: int, graphed: bool = False) -> tuple[float, float]:
        """LM head for the ``n`` sequences that sample, logits gather and sampling."""
        if n == 0:
            return 0.0, 0.0
        c, sh, spec = self.cost, self.shard, self.spec
        gather = c.collective_s("all_gather", n * sh.vocab * sh.dtype_bytes, spec.tp,
                                spec.link, graphed) * self.comm_kept
        full_vocab = spec.model.vocab
        sample = c.elementwise_s(2 * n * full_vocab * LOGIT_BYTES)
        return c.gemm_s(n, sh.vocab, sh.hidden) + gather + sample, gather


@dataclass(frozen=True)
class HopSpec:
    """The hand-off from one stage to the next: leader send, then a broadcast in the
    receiving TP group when its degree differs (HexGen's leader scheme)."""

    hidden_bytes: int  # bytes of one token's hidden state
    send_link: str
    recv_tp: int
    recv_link: str
    broadcast: bool


class HopCost:
    def __init__(self, spec: HopSpec, cost: CostModel, recv_cost: CostModel) -> None:
        self.spec = spec
        self.cost = cost
        self.recv_cost = recv_cost
        self._cache: dict[int, float] = {}

    def send_s(self, tokens: int) -> float:
        t = self._cache.get(tokens)
        if t is None:
            spec = self.spec
            nbytes = tokens * spec.hidden_bytes
            t = self.cost.collective_s("send_recv", nbytes, 2, spec.send_link)
            if spec.broadcast:
                t += self.recv_cost.collective_s("broadcast", nbytes, spec.recv_tp,
                                                 spec.recv_link)
            self._cache[tokens] = t
        return t


@dataclass
class PipelineModel:
    """A pipeline's stages and hops: what the engine asks for every step."""

    stages: list[StageCost]
    hops: list[HopCost]
    gpus: list[tuple[int, ...]]  # GPU ids per stage
    micro_batches: int
    # the plan's trip from the driver to the stages before the last and their launch
    # (overheads.stage_step_s each): it delays every step but holds no stage, since a
    # stage prepares one micro-batch while its GPU runs another
    lead_s: float = 0.0

    def step(self, batch: StepBatch) -> tuple[list[float], list[float], list[float]]:
        """Per stage (time_s, comm_s) and per hop send_s for one step of ``batch``."""
        times, comms = [], []
        for stage in self.stages:
            t, comm = stage.step(batch)
            times.append(t)
            comms.append(comm)
        tokens = batch.tokens
        return times, comms, [hop.send_s(tokens) for hop in self.hops]

    def period(self, batch: StepBatch) -> tuple[float, float, list[float], list[float]]:
        """(period, latency, stage times, stage comm times) of a step every lane takes
        alike: a lane's step takes its latency (the delay, the stages, the hops), and the
        lanes share each stage and link, so a lane steps at most every period."""
        times, comms, sends = self.step(batch)
        latency = self.lead_s + sum(times) + sum(sends)
        m = self.micro_batches
        return max(latency, m * max(times), m * max(sends, default=0.0)), latency, times, comms
