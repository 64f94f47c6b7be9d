"""The execution-time predictor: how long one operation takes on one GPU type.

Vidur's vocabulary, twinfer's method: instead of a trained regressor, each operation
is read off the GPU type's calibration profile (``twinfer.sim.profile``):

- **GEMM** ``[m, k] x [k, n]``: the samples of that exact weight shape ``(n, k)``,
  interpolated over m in log-log space (monotone). A shape the profile never measured
  falls back to a roofline whose ceilings are the best the profile achieved
  (bytes/s over its GEMM samples, the dtype's matmul peak) and says so.
- **decode attention** by (batch, context, q heads, kv heads, head dim): a (batch,
  context) grid per head configuration, bilinear in log space; above the grid the
  time grows linearly (decode attention streams the KV cache).
- **prefill attention** by prompt tokens per head configuration; a chunk of ``c``
  tokens after ``p`` cached ones costs ``f(p + c) - f(p)`` of the causal curve ``f``.
- **element-wise / norm** by bytes moved.
- **collectives** by (op, bytes, ranks, link kind): measured points in range, the
  alpha-beta line beyond; a missing group size or op is derived by ring-algorithm
  traffic factors from one that was measured, and a scenario's ``cluster.links``
  override replaces the profile's line for that link kind.

Nothing is extrapolated silently: every distinct basis of a prediction (which
samples, which fallback) is written to a ``Provenance`` the result carries.
"""

from __future__ import annotations

from collections import defaultdict

from twinfer.sim.interp import ABOVE, BELOW, INSIDE, LogLogGrid, LogLogSeries
from twinfer.sim.profile import COLLECTIVE_OPS, CollectiveFit, Profile
from twinfer.spec.cluster import LinkSpec
from twinfer.spec.errors import SpecError
from twinfer.spec.model import DTYPE_BYTES


class Provenance:
    """The distinct bases of a prediction: measured samples, scalings and fallbacks."""

    def __init__(self) -> None:
        self._lines: dict[tuple, str] = {}

    def __contains__(self, key: tuple) -> bool:
        return key in self._lines

    def note(self, key: tuple, text: str) -> None:
        if key not in self._lines:
            self._lines[key] = text

    def lines(self) -> list[str]:
        return sorted(self._lines.values())


def ring_traffic(op: str, ranks: int) -> float:
    """Bytes each rank sends per byte of the op's tensor under NCCL's ring algorithm.

    The tensor is what torch.distributed sees per rank: all_gather's input shard,
    reduce_scatter's full input, the all-reduced / broadcast / sent tensor.
    """
    r = ranks
    factors = {"all_reduce": 2.0 * (r - 1) / r, "all_gather": float(r - 1),
               "reduce_scatter": (r - 1) / r, "broadcast": 1.0, "send_recv": 1.0}
    if op not in factors:
        raise ValueError(f"unknown collective {op!r}")
    return factors[op]


class CostModel:
    """Per-operation times for one GPU type running a model of ``dtype``."""

    def __init__(self, profile: Profile, dtype: str,
                 links: dict[str, LinkSpec] | None = None,
                 provenance: Provenance | None = None) -> None:
        self.profile = profile
        self.dtype = dtype
        self.dtype_bytes = DTYPE_BYTES[dtype]
        self.links = dict(links or {})
        self.provenance = provenance if provenance is not None else Provenance()
        self.name = profile.name
        flops = profile.peaks.matmul_flops_per_s.get(dtype)
        if flops is None:
            have = ", ".join(sorted(profile.peaks.matmul_flops_per_s)) or "none"
            raise SpecError(f"profile {profile.name}.peaks.matmul_flops_per_s",
                            f"has no {dtype} peak (has: {have})",
                            f"add a {dtype} entry or use a model of another dtype")
        self.flops_per_s = flops
        self.sustained = profile.peaks.sustained_matmul_fraction
        # samples timed back to back in a CUDA graph already run at a sustained power
        # draw: the sustained fraction applies to eager-timed samples and rooflines only
        self._settle_gemm = profile.ops.gemm.timing != "graph"
        self._settle_prefill = profile.ops.prefill_attention.timing != "graph"
        self.copy_bytes_per_s = profile.peaks.copy_bytes_per_s
        self._build_compute()
        self._cache: dict[tuple, float] = {}
        self._note_stale_kernels()
        self._note_eager_timing()

    # ---- setup ---------------------------------------------------------------------
    def _note_stale_kernels(self) -> None:
        """Say when the profile's kernel samples were taken with another build of the
        kernels than this checkout's (``ops.<kind>.kernels``): they then price kernels
        the executor no longer runs."""
        from twinfer.fingerprint import kernels_fingerprint

        here = kernels_fingerprint()
        stale = self.profile.ops.taken_elsewhere(here)
        if stale:
            self.provenance.note(("kernels", self.name), (
                f"{self.name} {', '.join(stale)}: samples taken with another build of the "
                f"kernels than this checkout's ({here}); `twinfer calibrate --ops "
                f"{','.join(stale)}` re-measures them"))

    def _note_eager_timing(self) -> None:
        """Say when a GPU profile's kernel samples were each timed as one launch between
        two events: a short kernel then carries the event gap, which the executor, its
        kernels back to back, does not pay (docs/PROFILE.md, ``timing``)."""
        if self.profile.source != "measured":
            return
        eager = self.profile.ops.timed_one_by_one()
        if eager:
            self.provenance.note(("timing", self.name), (
                f"{self.name} {', '.join(eager)}: samples timed one launch at a time, so "
                f"short kernels are priced with the gap between two events (a few us each); "
                f"`twinfer calibrate --ops {','.join(eager)}` re-times them back to back"))

    def _build_compute(self) -> None:
        ops = self.profile.ops
        db = self.dtype_bytes
        self.samples_usable = ops.gemm.dtype == self.dtype
        gemm_pts: dict[tuple, list] = defaultdict(list)
        prefill_pts: dict[tuple, list] = defaultdict(list)
        decode_pts: dict[tuple, dict] = defaultdict(dict)
        gemm_bw = prefill_bw = decode_bw = 0.0
        if self.samples_usable:
            for s in ops.gemm.samples:
                gemm_pts[(s.n, s.k)].append((s.m, s.time_s))
                nbytes = (s.m * s.k + s.k * s.n + s.m * s.n) * db
                gemm_bw = self._achieved_bw(gemm_bw, nbytes, 2.0 * s.m * s.n * s.k, s.time_s)
            for s in ops.prefill_attention.samples:
                shape = (s.q_heads, s.kv_heads, s.head_dim)
                prefill_pts[shape].append((s.tokens, s.time_s))
                nbytes = s.tokens * (2 * s.q_heads + 2 * s.kv_heads) * s.head_dim * db
                flops = 2.0 * s.tokens * s.tokens * s.q_heads * s.head_dim
                prefill_bw = self._achieved_bw(prefill_bw, nbytes, flops, s.time_s)
            for s in ops.decode_attention.samples:
                grid = decode_pts[(s.q_heads, s.kv_heads, s.head_dim)]
                key = (s.batch, s.context)
                grid[key] = max(s.time_s, grid.get(key, 0.0))
                nbytes = _decode_bytes(s.batch, s.context, (s.q_heads, s.kv_heads, s.head_dim),
                                       db)
                flops = 4.0 * s.batch * s.context * s.q_heads * s.head_dim
                decode_bw = self._achieved_bw(decode_bw, nbytes, flops, s.time_s)
        self._gemm = {shape: LogLogSeries(pts) for shape, pts in gemm_pts.items()}
        self._prefill = {shape: LogLogSeries(pts) for shape, pts in prefill_pts.items()}
        self._decode: dict[tuple, LogLogGrid | LogLogSeries] = {}
        for shape, grid in decode_pts.items():
            if LogLogGrid.is_grid(grid):
                self._decode[shape] = LogLogGrid(grid)
            else:  # scattered points: one curve over KV tokens read
                self._decode[shape] = LogLogSeries((b * c, t) for (b, c), t in grid.items())
        self._gemm_bw = gemm_bw or self.copy_bytes_per_s
        self._prefill_bw = prefill_bw or self.copy_bytes_per_s
        self._decode_bw = decode_bw or self.copy_bytes_per_s
        self._elementwise = (LogLogSeries((s.bytes, s.time_s) for s in ops.elementwise.samples)
                             if ops.elementwise.samples else None)
        if ops.gemm.samples and not self.samples_usable:
            self.provenance.note(("dtype", self.name),
                                 f"{self.name}: compute samples are {ops.gemm.dtype}, the model "
                                 f"is {self.dtype}: GEMM and attention use the roofline")

    def _achieved_bw(self, best: float, nbytes: float, flops: float, time_s: float) -> float:
        """The best bytes/s of the memory-bound samples (a compute-bound sample's bytes/s
        says nothing about the memory ceiling)."""
        if nbytes / self.copy_bytes_per_s >= flops / self.flops_per_s:
            return max(best, nbytes / time_s)
        return best

    def _ceiling_note(self, op: str, shape: object, bw: float, have_samples: bool) -> None:
        if (op, "roofline", shape) in self.provenance:  # hot path: format the text once
            return
        label = _heads(shape) if isinstance(shape, tuple) else shape
        memory = ("best memory-bound sample" if bw != self.copy_bytes_per_s
                  else "copy peak")
        why = "no samples of this shape" if have_samples else "no samples"
        self.provenance.note((op, "roofline", shape),
                             f"{self.name} {op} {label}: roofline ({why}), memory "
                             f"{bw / 1e12:.2f} TB/s ({memory}), matmul "
                             f"{self.flops_per_s / 1e12:.0f} TFLOP/s (peak)")

    def _range_note(self, op: str, shape: object, where: str, lo: float, hi: float) -> None:
        if (op, where, shape) in self.provenance:
            return
        how = ("clamped to the smallest measured point" if where == BELOW
               else "scaled from the largest measured point")
        self.provenance.note((op, where, shape),
                             f"{self.name} {op} {shape}: outside measured range "
                             f"[{lo:g}, {hi:g}], {how}")

    # ---- compute -------------------------------------------------------------------
    def gemm_s(self, m: int, n: int, k: int) -> float:
        """[m, k] x [k, n] in the model's dtype."""
        key = ("gemm", m, n, k)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        series = self._gemm.get((n, k))
        settle = self._settle_gemm
        if series is None:
            t, settle = self._gemm_roofline(m, n, k), True
            self._ceiling_note("gemm", f"n={n} k={k}", self._gemm_bw, bool(self._gemm))
        else:
            t, where = series.at(m)
            if where == ABOVE:
                t *= self._gemm_roofline(m, n, k) / self._gemm_roofline(series.hi, n, k)
            if where in (ABOVE, BELOW):
                self._range_note("gemm", f"n={n} k={k}", where, series.lo, series.hi)
            else:
                self.provenance.note(("gemm", "inside", (n, k)),
                                     f"{self.name} gemm n={n} k={k}: interpolated over "
                                     f"{len(series)} measured m{_spikes(series)}")
        if settle:
            t = self._settled(t, 2.0 * m * n * k)
        self._cache[key] = t
        return t

    def _settled(self, t: float, flops: float) -> float:
        """``t`` measured in a burst, as it runs with the tensor cores busy for seconds:
        slowed by the profile's sustained matmul fraction in proportion to how
        compute-bound the op is (its FLOP/s over the peak; a memory-bound op keeps its
        time, since the clocks that drop are the SMs', not the memory's).

        Not for samples timed back to back in a CUDA graph (``timing`` 'graph'): each
        keeps the tensor cores busy without a pause for the whole sample, as a long
        prefill does. On the H100 that took them, the prefill kernels summed from such
        samples came out 1.8% over the executor's prefill GPU time (mean of six runs)
        without the fraction and 7.6% over with it (docs/VALIDATION.md, seventh
        session)."""
        if self.sustained >= 1.0 or t <= 0:
            return t
        busy = min(1.0, flops / t / self.flops_per_s)
        return t * (1.0 + (1.0 / self.sustained - 1.0) * busy)

    def _gemm_roofline(self, m: float, n: int, k: int) -> float:
        nbytes = (m * k + k * n + m * n) * self.dtype_bytes
        return max(2.0 * m * n * k / self.flops_per_s, nbytes / self._gemm_bw)

    def decode_attention_s(self, batch: int, context: float, q_heads: int, kv_heads: int,
                           head_dim: int) -> float:
        """One decode step of ``batch`` sequences over ``context`` KV tokens each (mean)."""
        if batch <= 0:
            return 0.0
        shape = (q_heads, kv_heads, head_dim)
        curve = self._decode.get(shape)
        if curve is None:
            self._ceiling_note("decode_attention", shape, self._decode_bw, bool(self._decode))
            nbytes = _decode_bytes(batch, context, shape, self.dtype_bytes)
            flops = 4.0 * batch * context * q_heads * head_dim
            return max(nbytes / self._decode_bw, flops / self.flops_per_s)
        if isinstance(curve, LogLogGrid):
            t, where_b, where_c = curve.at(batch, context)
            if where_b == ABOVE:
                t *= batch / curve.a_vals[-1]
            if where_c == ABOVE:
                t *= context / curve.b_vals[-1]
            outside = [(f"batch {w}", w) for w in (where_b,) if w != INSIDE]
            outside += [(f"context {w}", w) for w in (where_c,) if w != INSIDE]
        else:
            t, where = curve.at(batch * context)
            if where == ABOVE:
                t *= batch * context / curve.hi
            outside = [(f"KV tokens {where}", where)] if where != INSIDE else []
        for what, where in outside:
            if ("decode_attention", what, shape) not in self.provenance:
                how = ("clamped to the grid's edge" if where == BELOW
                       else "scaled linearly from the grid's edge")
                self.provenance.note(("decode_attention", what, shape),
                                     f"{self.name} decode_attention {_heads(shape)}: {what} "
                                     f"the measured range, {how}")
        if not outside and ("decode_attention", "inside", shape) not in self.provenance:
            self.provenance.note(("decode_attention", "inside", shape),
                                 f"{self.name} decode_attention {_heads(shape)}: interpolated "
                                 f"over measured (batch, context){_spikes(curve)}")
        return t

    def prefill_attention_s(self, tokens: float, q_heads: int, kv_heads: int,
                            head_dim: int) -> float:
        """Causal attention over one prompt of ``tokens`` tokens (0 for none)."""
        if tokens <= 0:
            return 0.0
        shape = (q_heads, kv_heads, head_dim)
        series = self._prefill.get(shape)
        if series is None:
            self._ceiling_note("prefill_attention", shape, self._prefill_bw,
                               bool(self._prefill))
            return self._prefill_roofline(tokens, shape)
        t, where = series.at(tokens)
        if where == ABOVE:
            t *= self._prefill_roofline(tokens, shape) / self._prefill_roofline(series.hi, shape)
        if where in (ABOVE, BELOW):
            self._range_note("prefill_attention", _heads(shape), where, series.lo, series.hi)
        else:
            self.provenance.note(("prefill_attention", "inside", shape),
                                 f"{self.name} prefill_attention {_heads(shape)}: interpolated "
                                 f"over {len(series)} measured prompt lengths{_spikes(series)}")
        if not self._settle_prefill:
            return t
        return self._settled(t, 2.0 * tokens * tokens * q_heads * head_dim)

    def _prefill_roofline(self, tokens: float, shape: tuple[int, int, int]) -> float:
        q, kv, d = shape
        flops = 2.0 * tokens * tokens * q * d  # QK^T and PV over the causal half
        nbytes = tokens * (2 * q + 2 * kv) * d * self.dtype_bytes
        return max(flops / self.flops_per_s, nbytes / self._prefill_bw)

    def prefill_chunk_s(self, chunk: int, prior: int, q_heads: int, kv_heads: int,
                        head_dim: int) -> float:
        """``chunk`` new prompt tokens attending causally over ``prior`` cached ones."""
        total = self.prefill_attention_s(prior + chunk, q_heads, kv_heads, head_dim)
        return total - self.prefill_attention_s(prior, q_heads, kv_heads, head_dim)

    def elementwise_s(self, nbytes: float) -> float:
        """A memory-bound kernel moving ``nbytes`` (read + write)."""
        if nbytes <= 0:
            return 0.0
        series = self._elementwise
        if series is None:
            self.provenance.note(("elementwise", "roofline"),
                                 f"{self.name} elementwise: bytes / copy bandwidth "
                                 f"{self.copy_bytes_per_s / 1e12:.2f} TB/s (no samples)")
            return nbytes / self.copy_bytes_per_s
        t, where = series.at(nbytes)
        if where == ABOVE:
            t *= nbytes / series.hi
        if where in (ABOVE, BELOW):
            self._range_note("elementwise", "", where, series.lo, series.hi)
        return t

    # ---- communication -------------------------------------------------------------
    def collective_s(self, op: str, nbytes: float, ranks: int, link: str,
                     graphed: bool = False) -> float:
        """``op`` over ``ranks`` GPUs joined by ``link``; ``nbytes`` per rank as torch sees.
        ``graphed``: replayed from a CUDA graph (decode steps), priced by the profile's
        graph-replayed samples where it has them for this size."""
        if ranks <= 1 or nbytes <= 0:
            return 0.0
        key = (op, nbytes, ranks, link, graphed)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        override = self.links.get(link)
        if override is not None:
            traffic = ring_traffic(op, ranks)
            t = override.latency_us * 1e-6 + traffic * nbytes / (override.bw_gbps * 1e9)
            self.provenance.note(("link", link), f"{link}: scenario override "
                                 f"{override.bw_gbps:g} GB/s, {override.latency_us:g} us "
                                 "(ring algorithm)")
        else:
            t = self._oneshot_all_reduce(nbytes, ranks, link, graphed) \
                if op == "all_reduce" else None
            if t is None and graphed:
                t = self._graphed_collective(op, nbytes, ranks, link)
            if t is None:
                t = self._profile_collective(op, nbytes, ranks, link)
        self._cache[key] = t
        return t

    def _graphed_collective(self, op: str, nbytes: float, ranks: int,
                            link: str) -> float | None:
        """From the graph-replayed samples of this very (op, ranks, link), up to their
        largest size (below the smallest: its time); None where there are none."""
        fit = self.profile.collective(link, op, ranks)
        if fit is None:
            return None
        return self._within(fit.graph_samples, nbytes, "graph-replayed",
                            f"{self.name} {op} {link} ranks={ranks} (CUDA graph)")

    def _within(self, samples: list, nbytes: float, what: str, label: str) -> float | None:
        """Interpolated from ``samples`` up to their largest size (below the smallest:
        its time); None without samples or above them."""
        if not samples:
            return None
        series = self._collective_series(samples, label)
        if nbytes > series.hi:
            return None
        t, _ = series.at(nbytes)
        self.provenance.note(("coll", what, label), f"{label}: interpolated over "
                             f"{len(series)} {what} sizes up to {series.hi:g} B")
        return t

    def _oneshot_all_reduce(self, nbytes: float, ranks: int, link: str,
                            graphed: bool) -> float | None:
        """The executor's one-shot symmetric-memory all-reduce, which it uses for every
        message up to the largest size the calibration timed it at (profile fields
        ``oneshot_samples`` / ``oneshot_graph_samples``); None where the profile has no
        such samples or the message is larger."""
        fit = self.profile.collective(link, "all_reduce", ranks)
        if fit is None:
            return None
        samples = fit.oneshot_graph_samples if graphed else fit.oneshot_samples
        how = "CUDA graph" if graphed else "eager"
        return self._within(samples, nbytes, "one-shot",
                            f"{self.name} all_reduce {link} ranks={ranks} "
                            f"(one-shot symm-mem, {how})")

    def check_link(self, link: str) -> None:
        """Raise now, not mid-simulation, if collectives over ``link`` cannot be priced."""
        if link not in self.links:
            self._nearest_collective("all_reduce", 2, link)

    def _profile_collective(self, op: str, nbytes: float, ranks: int, link: str) -> float:
        fit = self.profile.collective(link, op, ranks)
        label = f"{self.name} {op} {link} ranks={ranks}"
        if fit is not None:
            return self._fitted(fit, nbytes, label)
        src_op, src_ranks, src = self._nearest_collective(op, ranks, link)
        self.provenance.note(("derived", op, ranks, link),
                             f"{label}: not measured, derived from {src_op} ranks={src_ranks} "
                             "(its latency; bandwidth by ring-algorithm traffic factors)")
        # NCCL's small-message protocols keep latency nearly flat in group size and op,
        # so the source's alpha is kept; the bus bandwidth carries over by ring traffic.
        bus_bytes_per_s = src.bytes_per_s * ring_traffic(src_op, src_ranks)
        return src.alpha_s + ring_traffic(op, ranks) * nbytes / bus_bytes_per_s

    def _fitted(self, fit: CollectiveFit, nbytes: float, label: str) -> float:
        if not fit.samples:
            why = f": FALLBACK, {fit.fallback}" if fit.fallback else ""
            self.provenance.note(("fit", label), f"{label}: alpha-beta line without samples "
                                 f"({fit.alpha_s * 1e6:.1f} us, {fit.bytes_per_s / 1e9:.0f} GB/s)"
                                 + why)
            return fit.alpha_s + nbytes / fit.bytes_per_s
        series = self._collective_series(fit.samples, label)
        t, where = series.at(nbytes)
        if where == ABOVE:  # continue along the fitted bandwidth, monotone at the edge
            t += (nbytes - series.hi) / fit.bytes_per_s
        elif where == BELOW:  # the line, but never above the smallest measured time
            t = min(t, fit.alpha_s + nbytes / fit.bytes_per_s)
        if where == INSIDE:
            self.provenance.note(("coll", label), f"{label}: interpolated over "
                                 f"{len(series)} measured sizes{_spikes(series)}")
        else:
            self.provenance.note(("coll", where, label),
                                 f"{label}: {where} measured sizes [{series.lo:g}, "
                                 f"{series.hi:g}] B, continued along the alpha-beta line")
        return t

    def _collective_series(self, samples: list, label: str) -> LogLogSeries:
        key = ("series", label)
        series = self._cache.get(key)
        if series is None:
            series = LogLogSeries((s.bytes, s.time_s) for s in samples)
            self._cache[key] = series  # type: ignore[assignment]
        return series  # type: ignore[return-value]

    def _nearest_collective(self, op: str, ranks: int,
                            link: str) -> tuple[str, int, CollectiveFit]:
        by_op = self.profile.collectives.get(link, {})  # type: ignore[call-overload]
        candidates = []
        for src_op in COLLECTIVE_OPS:
            for r_str, fit in by_op.get(src_op, {}).items():
                r = int(r_str)
                # the same op first, then all_reduce (NCCL's best-tuned), then the rest
                rank_op = 0 if src_op == op else (1 if src_op == "all_reduce" else 2)
                candidates.append(((rank_op, abs(r - ranks), r), src_op, r, fit))
        if not candidates:
            raise SpecError(f"cluster.links.{link}",
                            f"profile {self.name} has no collectives over {link} and the "
                            "scenario gives no link override",
                            f"add cluster.links.{link}: {{bw_gbps: ..., latency_us: ...}} "
                            "or calibrate that link")
        _, src_op, r, fit = min(candidates, key=lambda c: c[0])
        return src_op, r, fit


def _spikes(curve: LogLogSeries | LogLogGrid) -> str:
    n = curve.spikes
    return f" ({n} glitch sample{'s' if n > 1 else ''} replaced)" if n else ""


def _heads(shape: tuple[int, int, int]) -> str:
    q, kv, d = shape
    return f"q_heads={q} kv_heads={kv} head_dim={d}"


def _decode_bytes(batch: float, context: float, shape: tuple[int, int, int],
                  dtype_bytes: int) -> float:
    """KV read (K and V) plus query in and output out; ``shape`` = (q, kv heads, head dim)."""
    q_heads, kv_heads, head_dim = shape
    return (2.0 * batch * context * kv_heads + 2.0 * batch * q_heads) * head_dim * dtype_bytes
