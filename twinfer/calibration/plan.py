"""The sweep plan: which points each microbenchmark group measures, on GPU or CPU.

Full GPU plan (about five minutes on an H100, collectives excluded): GEMMs of the
8B/7B/70B presets under TP 1/2/4/8 for m = 1..16K tokens; paged decode attention for
batch 1..64 and context 256..32K per head configuration; causal prefill attention for
128..16K tokens; element-wise ops from 64 KiB to 1 GiB. The CPU plan uses the tiny
test models and smaller ranges; ``quick`` trims either (a quick CPU run, collectives
included, finishes in well under a minute on two cores).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from twinfer.calibration.shapes import (
    CPU_PRESETS,
    GPU_PRESETS,
    TP_DEGREES,
    GemmShape,
    HeadShape,
    log_spaced,
    powers_of_two,
    preset_work,
)

OPS = ("gemm", "decode_attention", "prefill_attention", "elementwise", "collectives")
COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "broadcast", "send_recv")
ELEMENTWISE = ("copy", "rmsnorm", "add_rmsnorm", "rope", "silu_mul")


@dataclass(frozen=True)
class SweepPlan:
    """Points of every sweep; a group is one shape (or op) over its size axis."""

    device: str  # "cuda" or "cpu"
    dtype: str  # "bf16" or "fp32"
    work: list[GemmShape | HeadShape]  # in measuring order (``shapes.preset_work``)
    gemm_m: list[int]
    decode_batches: list[int]
    decode_contexts: list[int]
    prefill_tokens: list[int]
    elementwise_bytes: list[int]
    comm_bytes: list[int]
    comm_ops: tuple[str, ...] = COLLECTIVES
    page_size: int = 16
    max_flops: float = float("inf")  # skip GEMM points larger than this
    presets: tuple[str, ...] = field(default=())

    @property
    def gemm_shapes(self) -> list[GemmShape]:
        return [w for w in self.work if isinstance(w, GemmShape)]

    @property
    def heads(self) -> list[HeadShape]:
        return [w for w in self.work if isinstance(w, HeadShape)]

    def fingerprint(self) -> dict[str, object]:
        """What a resumed run must share with the interrupted one."""
        return {"device": self.device, "dtype": self.dtype, "gemm_m": self.gemm_m,
                "decode_batches": self.decode_batches, "decode_contexts": self.decode_contexts,
                "prefill_tokens": self.prefill_tokens, "page_size": self.page_size,
                "elementwise_bytes": self.elementwise_bytes, "comm_bytes": self.comm_bytes}


def gpu_plan(quick: bool = False) -> SweepPlan:
    presets = GPU_PRESETS[:1] if quick else GPU_PRESETS
    tps = (1, 2) if quick else TP_DEGREES
    return SweepPlan(
        device="cuda", dtype="bf16",
        work=preset_work(presets, tps),
        gemm_m=log_spaced(1, 16384, 8 if quick else 15),
        decode_batches=[1, 16, 64] if quick else [1, 4, 16, 64],
        decode_contexts=powers_of_two(256, 32768, 2 if quick else 1),
        prefill_tokens=powers_of_two(128, 16384, 2 if quick else 1),
        elementwise_bytes=powers_of_two(1 << 16, 1 << 30, 2),
        comm_bytes=powers_of_two(4096, 256 << 20, 2 if quick else 1),
        presets=presets,
    )


def cpu_plan(quick: bool = False) -> SweepPlan:
    tps = (1, 2)
    return SweepPlan(
        device="cpu", dtype="fp32",
        work=preset_work(CPU_PRESETS, tps),
        gemm_m=log_spaced(1, 2048 if quick else 16384, 7 if quick else 12),
        decode_batches=[1, 4, 16] if quick else [1, 4, 16, 64],
        decode_contexts=powers_of_two(16, 1024 if quick else 8192, 2 if quick else 1),
        prefill_tokens=powers_of_two(16, 1024 if quick else 4096, 2 if quick else 1),
        elementwise_bytes=powers_of_two(1 << 12, (1 << 24) if quick else (1 << 28), 2),
        comm_bytes=powers_of_two(256, (4 << 20) if quick else (64 << 20), 2),
        max_flops=2e9 if quick else 5e10,
        presets=CPU_PRESETS,
    )


def plan_for(device: str, quick: bool = False) -> SweepPlan:
    return gpu_plan(quick) if device == "cuda" else cpu_plan(quick)
