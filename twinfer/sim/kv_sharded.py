"""Cost of a `kv_sharded` stage: attention over a sequence-split KV cache + the exchange.

Distributed flash decode (Iris, examples/10_flash_decode; the executor's
``twinfer.exec.kvshard_comm``): weights are tensor-parallel as usual, but every GPU
of the group holds all KV heads of 1/tp of each sequence's tokens. Per layer, on
every GPU:

1. the column-parallel Q/K/V projections, then an all-gather of them so that every
   GPU has all heads of the step's tokens (it stores the K/V of the tokens it owns);
2. decode: attention of all query heads over its 1/tp of the keys -> partial output
   + LSE (a prompt instead attends this GPU's query heads over all of its keys, which
   are all in the step, as in TP: no exchange);
3. the exchange of the decode partials, one of three variants:
   - ``allgather``: an all-gather of ``rows x (head_dim + 1)`` fp32 values per GPU
     (the profile's fitted all_gather over the group's link);
   - ``fused``: each GPU stores its partials straight into its peers' memory from
     the attention kernel and raises per-tile flags: ``tp - 1`` copies at the
     link's send/recv bandwidth plus one flag round trip, and no collective launch;
   - ``mpi``: device-to-host copy, MPI all-gather in host memory, host-to-device copy;
4. the LSE combine (memory-bound), then the row-parallel output projection and its
   all-reduce, as for any TP layer.

The fused and MPI variants' fixed latencies are not in the profiles yet: they are
the constants below, named in every prediction's provenance, until
``python -m twinfer.exec.kvshard_bench --case compare`` measurements replace them.
"""

from __future__ import annotations

from twinfer.sim.cost import CostModel
from twinfer.sim.stage import StageCost, StageSpec, StepBatch

FUSED_SIGNAL_S = 3e-6  # a remote flag store + the waiter's acquire (NVLink round trip)
MPI_HOST_COPY_S = 10e-6  # one small cudaMemcpy with its synchronization
MPI_LATENCY_S = 3e-6  # an MPI all-gather step in shared memory
MPI_HOST_BYTES_PER_S = 10e9  # host staging and MPI copies
PARTIAL_BYTES = 4  # partial outputs and LSEs travel in fp32


def link_bandwidth(cost: CostModel, link: str) -> float:
    """Asymptotic send/recv bytes/s of ``link``: the slope of the profile's curve
    between 64 and 128 MiB (no latency term)."""
    small, large = 64 << 20, 128 << 20
    dt = cost.collective_s("send_recv", large, 2, link) - cost.collective_s(
        "send_recv", small, 2, link)
    return (large - small) / dt if dt > 0 else cost.copy_bytes_per_s


class ExchangeCost:
    """Time to exchange and merge ``rows`` partial rows among ``tp`` GPUs."""

    def __init__(self, cost: CostModel, link: str, tp: int, comm: str) -> None:
        if comm not in ("allgather", "fused", "mpi"):
            raise ValueError(f"unknown kv_sharded comm {comm!r}")
        self.cost, self.link, self.tp, self.comm = cost, link, tp, comm
        self._bw = link_bandwidth(cost, link) if comm == "fused" else 0.0
        notes = {
            "fused": f"partials pushed at the {link} send/recv bandwidth "
                     f"{self._bw / 1e9:.0f} GB/s + {FUSED_SIGNAL_S * 1e6:g} us flag latency "
                     "(assumed, not calibrated)",
            "mpi": f"2 host copies of {MPI_HOST_COPY_S * 1e6:g} us + MPI "
                   f"{MPI_LATENCY_S * 1e6:g} us + bytes at {MPI_HOST_BYTES_PER_S / 1e9:g} GB/s "
                   "(assumed, not calibrated)",
            "allgather": f"the profile's all_gather over {link}",
        }
        cost.provenance.note(("kv_sharded", comm, link),
                             f"{cost.name} kv_sharded {comm} exchange: {notes[comm]}")

    def time_s(self, rows: int, head_dim: int) -> tuple[float, float]:
        """(exchange time, combine time) for ``rows`` = tokens x query heads."""
        if self.tp <= 1 or rows == 0:
            return 0.0, 0.0
        nbytes = rows * (head_dim + 1) * PARTIAL_BYTES  # this GPU's partials
        peers = self.tp - 1
        if self.comm == "allgather":
            t = self.cost.collective_s("all_gather", nbytes, self.tp, self.link)
        elif self.comm == "fused":
            t = FUSED_SIGNAL_S + peers * nbytes / self._bw
        else:
            t = (2 * MPI_HOST_COPY_S + MPI_LATENCY_S * peers
                 + (2 + peers) * nbytes / MPI_HOST_BYTES_PER_S)
        combine = self.cost.elementwise_s(self.tp * nbytes + rows * head_dim * 2)
        return t, combine


class KvShardedStageCost(StageCost):
    """A TP stage whose attention runs over the sequence-split KV cache."""

    graph_decode = False  # the executor decodes this layout eagerly (per-step headers)

    def __init__(self, spec: StageSpec, cost: CostModel, comm: str) -> None:
        super().__init__(spec, cost)
        self.exchange = ExchangeCost(cost, spec.link, spec.tp, comm)
        # one-entry memo: step() and attention_s() ask about the same batch in a row
        self._last: tuple[tuple, tuple[float, float]] = ((), (0.0, 0.0))

    def step(self, batch: StepBatch) -> tuple[float, float]:
        time_s, comm_s = super().step(batch)
        return time_s, comm_s + self._attention(batch)[1]

    def attention_s(self, batch: StepBatch) -> float:
        return self._attention(batch)[0]

    def _attention(self, batch: StepBatch) -> tuple[float, float]:
        """All layers: (time including the exchanges, of which communication)."""
        key = (batch.decode_n, batch.decode_ctx_sum, batch.chunks)
        if self._last[0] == key:
            return self._last[1]
        m, c, tp = self.spec.model, self.cost, self.spec.tp
        compute = comm = 0.0
        if batch.decode_n:
            ctx = batch.decode_ctx_sum / batch.decode_n / tp  # this GPU's share
            compute += c.decode_attention_s(batch.decode_n, ctx, m.heads, m.kv_heads,
                                            m.head_dim)
            t, combine = self.exchange.time_s(batch.decode_n * m.heads, m.head_dim)
            comm += t
            compute += combine
        sh = self.shard
        for new, prior in batch.chunks:
            # a prompt's keys are all in its step: this GPU's query heads over all of
            # them, as in TP (the executor does the same), no exchange
            compute += c.prefill_chunk_s(new, prior, sh.q_heads, sh.kv_heads, sh.head_dim)
        if batch.tokens and tp > 1:  # every GPU needs every head's Q/K/V
            qkv_bytes = batch.tokens * self.shard.qkv_n * self.shard.dtype_bytes
            comm += c.collective_s("all_gather", qkv_bytes, tp, self.spec.link)
        layers = self.spec.num_layers
        out = ((compute + comm * self.comm_kept) * layers, comm * self.comm_kept * layers)
        self._last = (key, out)
        return out
