"""Compute microbenchmarks on one device: GEMM, decode and prefill attention, element-wise.

Each function measures one *group* (one GEMM shape over m, one head configuration over
batch x context, ...) and returns its samples as plain dicts for the profile. The ops
are the ones the executor runs: its linear (``twinfer.kernels.gemv.linear``: the skinny
decode kernel where this GPU's table says it wins, else ``F.linear``) against an [n, k]
weight, the fused SwiGLU activation, the project's
paged split-KV decode (``twinfer.kernels.paged_flash_decode``), its causal varlen
prefill (``prefill_attention``) and its fused norm/RoPE kernels, all with
``backend="auto"`` (Triton on CUDA, the torch reference on CPU). Each kernel is timed
back to back inside a CUDA graph (``measure_graphed``; one of 1 ms or more between
events): the executor's decode steps replay graphs, and its prefill, once the GPU is
behind the host, runs queued kernels without a gap between them either. Until the
seventh session only decode attention was, and the rest was timed one launch between
two events: a few microseconds per kernel too much, which the fitted overheads absorbed
for decode (a negative ``per_layer_s``) and nothing did for prefill.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from twinfer.calibration.plan import SweepPlan
from twinfer.calibration.shapes import GemmShape, HeadShape
from twinfer.calibration.timing import (
    TimingConfig,
    cache_bytes,
    measure,
    measure_graphed,
    rotations,
)
from twinfer.kernels.activation import silu_mul
from twinfer.kernels.decode import paged_flash_decode
from twinfer.kernels.gemv import linear
from twinfer.kernels.norm_rope import add_rmsnorm, apply_rope, rmsnorm, rope_cos_sin
from twinfer.kernels.prefill import prefill_attention

TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
MEMORY_SHARE = 0.4  # skip a point whose tensors need more than this share of free memory
HIDDEN = 4096  # row width of the element-wise sweeps


class Bench:
    """The device, dtype and timing settings every sweep of one run shares."""

    def __init__(self, plan: SweepPlan, timing: TimingConfig) -> None:
        self.plan = plan
        self.timing = timing
        self.device = torch.device(plan.device)
        self.dtype = TORCH_DTYPES[plan.dtype]
        self.elem_bytes = torch.finfo(self.dtype).bits // 8
        self.cache_bytes = cache_bytes(self.device)

    def fits(self, nbytes: int) -> bool:
        if self.device.type != "cuda":
            return nbytes < 4 << 30
        free, _ = torch.cuda.mem_get_info(self.device)
        # memory the caching allocator holds but no tensor uses is free for us too
        cached = torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        return nbytes < MEMORY_SHARE * (free + cached)

    def copies(self, make: Callable[[], tuple], working_set_bytes: int) -> list[tuple]:
        """Enough independent input sets that successive reps miss the cache."""
        return [make() for _ in range(rotations(working_set_bytes, self.cache_bytes))]

    def time(self, inputs: list[tuple], op: Callable[..., object],
             graphed: bool = False) -> float:
        """Median seconds of ``op`` over the rotation copies ``inputs``; ``graphed``: as
        a CUDA graph replays it back to back (``measure_graphed``), on CUDA."""
        def run(i: int) -> object:
            return op(*inputs[i % len(inputs)])

        with torch.inference_mode():
            if graphed:
                return measure_graphed(run, self.device, self.timing)
            return measure(run, self.device, self.timing)

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=self.device, dtype=self.dtype)


def gemm_group(bench: Bench, shape: GemmShape) -> list[dict]:
    """``y = x @ W.T`` for x [m, k], W [n, k], every m of the plan."""
    samples = []
    for m in bench.plan.gemm_m:
        if 2.0 * m * shape.n * shape.k > bench.plan.max_flops:
            continue
        ws = (m * shape.k + shape.n * shape.k) * bench.elem_bytes
        if not bench.fits(ws + m * shape.n * bench.elem_bytes):
            continue
        inputs = bench.copies(lambda m=m: (bench.randn(m, shape.k),
                                           bench.randn(shape.n, shape.k)), ws)
        # the executor's linear: the skinny kernel where it wins
        t = bench.time(inputs, linear, graphed=True)
        samples.append({"m": m, "n": shape.n, "k": shape.k, "time_s": t})
        del inputs
    return samples


def _decode_inputs(bench: Bench, heads: HeadShape, batch: int, context: int) -> tuple:
    page = bench.plan.page_size
    pages_per_seq = -(-context // page)
    num_blocks = batch * pages_per_seq
    # [num_blocks, page_size, kv_heads, head_dim]; each sequence owns its pages, shuffled
    # so that the block table is not a trivially contiguous walk.
    k_pages = bench.randn(num_blocks, page, heads.kv_heads, heads.head_dim)
    v_pages = bench.randn(num_blocks, page, heads.kv_heads, heads.head_dim)
    perm = torch.randperm(num_blocks, device=bench.device, dtype=torch.int64)
    block_table = perm.view(batch, pages_per_seq).to(torch.int32)
    seq_lens = torch.full((batch,), context, device=bench.device, dtype=torch.int32)
    q = bench.randn(batch, heads.q_heads, heads.head_dim)  # [batch, q_heads, head_dim]
    return q, k_pages, v_pages, block_table, seq_lens


def decode_group(bench: Bench, heads: HeadShape) -> list[dict]:
    """One new token per sequence attending over ``context`` cached tokens (paged KV)."""
    def kv_bytes_of(batch: int, context: int) -> int:
        return 2 * batch * context * heads.kv_heads * heads.head_dim * bench.elem_bytes

    # The cost model interpolates a full (batch x context) grid: drop the longest
    # contexts whose largest batch does not fit rather than leave holes.
    top = max(bench.plan.decode_batches)
    contexts = [c for c in bench.plan.decode_contexts if bench.fits(1.2 * kv_bytes_of(top, c))]
    def timed(batch: int, context: int) -> float:
        inputs = bench.copies(lambda b=batch, c=context: _decode_inputs(bench, heads, b, c),
                              kv_bytes_of(batch, context))
        # the executor's decode replays CUDA graphs: time the kernel as they run it
        return bench.time(inputs, paged_flash_decode, graphed=True)

    batches = bench.plan.decode_batches
    samples = [{"batch": batch, "context": context, "q_heads": heads.q_heads,
                "kv_heads": heads.kv_heads, "head_dim": heads.head_dim,
                "time_s": timed(batch, context)}
               for batch in batches for context in contexts]
    return retime_glitches(samples, batches, contexts, timed)


def retime_glitches(samples: list[dict], batches: list[int], contexts: list[int],
                    timed: Callable[[int, int], float]) -> list[dict]:
    """Time once more every decode sample that took longer than a larger batch at the
    same context (`twinfer.sim.interp.grid_glitches`: less work in more time is a glitch,
    e.g. a clock change or another process mid-measurement), keeping the faster of the
    two timings; the first is kept as ``first_time_s``. The twin refills what is still
    a glitch after this from the sample's row."""
    from twinfer.sim.interp import grid_glitches

    if len(samples) != len(batches) * len(contexts):
        return samples
    at = {(s["batch"], s["context"]): s for s in samples}
    flags, _ = grid_glitches([[at[(b, c)]["time_s"] for c in contexts] for b in batches])
    for i, batch in enumerate(batches):
        for j, context in enumerate(contexts):
            if flags[i][j]:
                sample = at[(batch, context)]
                again = timed(batch, context)
                sample["first_time_s"] = sample["time_s"]
                sample["time_s"] = min(sample["time_s"], again)
    return samples


def prefill_group(bench: Bench, heads: HeadShape) -> list[dict]:
    """Causal attention of one packed prompt of ``tokens`` tokens."""
    samples = []
    for tokens in bench.plan.prefill_tokens:
        qkv_bytes = tokens * (heads.q_heads * 2 + heads.kv_heads * 2) * heads.head_dim
        if not bench.fits(qkv_bytes * bench.elem_bytes * 2):
            continue

        def make(n: int = tokens) -> tuple:
            cu = torch.tensor([0, n], device=bench.device, dtype=torch.int32)
            return (bench.randn(n, heads.q_heads, heads.head_dim),
                    bench.randn(n, heads.kv_heads, heads.head_dim),
                    bench.randn(n, heads.kv_heads, heads.head_dim), cu, n)

        def op(q, k, v, cu, n):
            return prefill_attention(q, k, v, cu, max_seqlen=n)

        inputs = bench.copies(make, qkv_bytes * bench.elem_bytes)
        t = bench.time(inputs, op, graphed=True)
        samples.append({"tokens": tokens, "q_heads": heads.q_heads, "kv_heads": heads.kv_heads,
                        "head_dim": heads.head_dim, "time_s": t})
        del inputs
    return samples


def _silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    return silu_mul(gate_up)  # the executor's fused kernel (its reference on CPU)


FACTORS = {"copy": 2, "rmsnorm": 2, "add_rmsnorm": 4, "silu_mul": 3, "rope": 2}


def _elementwise_case(bench: Bench, op: str, target_bytes: int) -> tuple[Callable, Callable, int]:
    """(make inputs, op, bytes read + written) of one op moving about ``target_bytes``.

    Rows are ``HIDDEN`` wide, narrower (down to 16) for small sizes so that the
    smallest points are a few rows of a small model rather than one row of a big one.
    """
    per_row = FACTORS[op] * bench.elem_bytes
    width = HIDDEN
    while width > 16 and target_bytes < 4 * per_row * width:
        width //= 2
    rows = max(1, target_bytes // (per_row * width))
    row = width * bench.elem_bytes
    weight = torch.ones(width, device=bench.device, dtype=bench.dtype)
    if op == "rmsnorm":
        return (lambda: (bench.randn(rows, width),),
                lambda x: rmsnorm(x, weight), 2 * rows * row)
    if op == "add_rmsnorm":
        return (lambda: (bench.randn(rows, width), bench.randn(rows, width)),
                lambda x, r: add_rmsnorm(x, r, weight), 4 * rows * row)
    if op == "copy":
        return (lambda: (bench.randn(rows, width), bench.randn(rows, width)),
                lambda dst, src: dst.copy_(src), 2 * rows * row)
    if op == "silu_mul":
        return (lambda: (bench.randn(rows, 2 * width),), _silu_mul, 3 * rows * row)
    # rope: q [tokens, 4 g, d] and k [tokens, g, d] rotated (Llama-3's 4:1 GQA shape)
    head_dim = min(128, width)
    group = max(1, width // (4 * head_dim))
    tokens = rows
    table = rope_cos_sin(8192, head_dim, device=bench.device)
    pos = torch.arange(tokens, device=bench.device) % 8192
    return (lambda: (bench.randn(tokens, 4 * group, head_dim),
                     bench.randn(tokens, group, head_dim)),
            lambda q, k: apply_rope(q, k, pos, table),
            2 * tokens * 5 * group * head_dim * bench.elem_bytes)


def elementwise_group(bench: Bench, op: str) -> list[dict]:
    """One element-wise op over the plan's byte sizes (bytes = read + written)."""
    samples = []
    for target in bench.plan.elementwise_bytes:
        make, fn, nbytes = _elementwise_case(bench, op, target)
        if not bench.fits(2 * nbytes):
            continue
        inputs = bench.copies(make, nbytes)
        t = bench.time(inputs, fn, graphed=True)
        samples.append({"op": op, "bytes": int(nbytes), "time_s": t})
        del inputs
    return samples


def peaks_group(bench: Bench) -> list[dict]:
    """A large copy and a large square GEMM: the device's best throughputs (the peaks
    every profile carries, whatever ``--ops`` left out)."""
    gpu = bench.device.type == "cuda"
    copy_bytes, side = (1 << 30, 8192) if gpu else (1 << 26, 1024)
    make, fn, nbytes = _elementwise_case(bench, "copy", copy_bytes)
    copy_s = bench.time([make()], fn)
    gemm_s = bench.time([(bench.randn(side, side), bench.randn(side, side))], F.linear)
    return [{"op": "copy", "bytes": int(nbytes), "time_s": copy_s},
            {"m": side, "n": side, "k": side, "time_s": gemm_s}]


SUSTAINED_S = 3.0  # how long the sustained GEMM runs
SUSTAINED_WINDOW_S = 0.05  # one timed window


def sustained_group(bench: Bench, seconds: float = SUSTAINED_S) -> list[dict]:
    """A prefill's GEMMs run back to back for ``seconds``: FLOP/s per window.

    The sweeps time each point in short bursts (at most ``max_reps`` runs); an executor
    prefill keeps the tensor cores busy for seconds, and a GPU held at its power limit
    lowers its clocks. What matters is how much slower *the prefill's own GEMMs* run
    then: the layer GEMMs of the plan's first preset (QKV, output, gate/up, down at
    8192 tokens, one GPU) are timed in bursts as the sweeps do, then cycled back to back.
    The windows' rates over the burst rate give the profile's
    ``sustained_matmul_fraction``. (The second session ran the 8192^3 square GEMM
    instead, which draws more power than a model's GEMMs and throttled more: TTFT
    came out 3-14% over.) The last entry carries the burst rate. GPU only.
    """
    if bench.device.type != "cuda":
        return []
    from twinfer.calibration.shapes import model_gemms
    from twinfer.spec import model_preset

    model = model_preset(bench.plan.presets[0] if bench.plan.presets else "llama-3-8b")
    m = 8192
    shapes = [g for g in model_gemms(model, 1) if g.n < model.vocab]  # not the LM head
    inputs = [(bench.randn(m, g.k), bench.randn(g.n, g.k)) for g in shapes]
    flops = sum(2.0 * m * g.n * g.k for g in shapes)  # one pass over the layer's GEMMs
    burst_s = sum(bench.time([x], F.linear) for x in inputs)

    def one_pass() -> None:
        for a, b in inputs:
            F.linear(a, b)

    with torch.inference_mode():
        per_window = max(1, round(SUSTAINED_WINDOW_S / burst_s))
        windows = max(4, round(seconds / (per_window * burst_s)))
        marks = [torch.cuda.Event(enable_timing=True) for _ in range(windows + 1)]
        marks[0].record()
        for w in range(windows):
            for _ in range(per_window):
                one_pass()
            marks[w + 1].record()
        torch.cuda.synchronize()
    t, out = 0.0, []
    for start, end in zip(marks, marks[1:], strict=False):
        dt = start.elapsed_time(end) * 1e-3
        t += dt
        out.append({"t_s": round(t, 4), "flops_per_s": flops * per_window / dt})
    label = f"{model.name} layer GEMMs at {m} tokens: " + ", ".join(
        f"{g.n}x{g.k}" for g in shapes)
    return out + [{"burst_flops_per_s": flops / burst_s, "gemms": label}]
