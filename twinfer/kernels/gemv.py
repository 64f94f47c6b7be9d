"""Skinny GEMM for decode: ``y = x W^T`` with few rows (m <= 16), streaming W from HBM.

At small batch a decode step's GEMMs read every weight byte once and do two flops per
byte per row: their time is the weight bytes over the bandwidth the kernel sustains.
On an H200, cuBLAS's kernels for one row of the TP=2 Llama-3-8B shards (``F.linear``,
W [N, K] row-major) read 1.5-1.7 TB/s, against ~4.2 TB/s of copy bandwidth
(docs/BENCHMARKS.md): too few thread blocks, or split-K reductions, for matrices of
16-120 MB. This kernel gives each program ``BLOCK_N`` rows of W and a ``K`` range,
loads W tiles along K (coalesced), and accumulates in fp32:

- ``m == 1``: multiply-and-sum on the CUDA cores (``FMA``), no padding;
- ``m <= 16``: ``tl.dot`` of the x tile (rows padded to 16 by masking) against the W
  tile on the tensor cores;
- ``SPLIT_K > 1`` (small N): programs over K slices add fp32 partials atomically into a
  zeroed buffer, cast at the end.

Which shapes it takes, and with which launch, is measured per GPU type, not guessed:
``python -m twinfer.calibration.gemv_tune`` times every configuration against cuBLAS for
the model presets' weight shapes and writes ``gemv_tables.json`` (keyed by
``torch.cuda.get_device_name()``, then ``"N,K"``). `linear` uses the kernel only where
that table says it is faster; everywhere else (unknown GPU or shape, m > 16, fp32, a
non-contiguous weight, CPU) it is ``F.linear``. ``TWINFER_GEMV=off`` forces cuBLAS,
``TWINFER_GEMV=force`` the kernel with a default launch wherever the shape allows
(experiments, tests).
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from twinfer.kernels.backend import (
    Backend,
    arg_key,
    cdiv,
    interpreting,
    launch,
    pdl_epilogue,
    pdl_prologue,
    use_triton,
)

ENV = "TWINFER_GEMV"
MAX_M = 16
TABLES = Path(__file__).with_name("gemv_tables.json")


@triton.jit
def _skinny_kernel(
    x_ptr, w_ptr, out_ptr, M, N, K, k_per_split, stride_xm, stride_wn, stride_om,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    FMA: tl.constexpr, ATOMIC: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    PDL: tl.constexpr,
):
    pdl_prologue(PDL)
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    n_mask = offs_n < N
    k_start = pid_k * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * stride_wn
    if FMA:  # one row of x: a [BLOCK_N] dot product per program, CUDA cores
        acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for k0 in range(k_start, k_end, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_mask = offs_k < k_end
            x = tl.load(x_ptr + offs_k, mask=k_mask, other=0.0).to(tl.float32)
            w = tl.load(w_rows + offs_k[None, :], mask=n_mask[:, None] & k_mask[None, :],
                        other=0.0).to(tl.float32)
            acc += tl.sum(w * x[None, :], axis=1)
        if ATOMIC:
            tl.atomic_add(out_ptr + offs_n, acc, mask=n_mask)
        else:
            tl.store(out_ptr + offs_n, acc.to(out_ptr.dtype.element_ty), mask=n_mask)
    else:  # up to BLOCK_M rows of x: tensor-core dot products
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        m_mask = offs_m < M
        x_rows = x_ptr + offs_m[:, None] * stride_xm
        for k0 in range(k_start, k_end, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_mask = offs_k < k_end
            x = tl.load(x_rows + offs_k[None, :], mask=m_mask[:, None] & k_mask[None, :],
                        other=0.0)
            w = tl.load(w_rows + offs_k[None, :], mask=n_mask[:, None] & k_mask[None, :],
                        other=0.0)
            if UPCAST:  # Triton's CPU interpreter gets bf16 dot products wrong
                x = x.to(tl.float32)
                w = w.to(tl.float32)
            acc += tl.dot(x, tl.trans(w), input_precision=DOT_PRECISION)
        out = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
        mask = m_mask[:, None] & n_mask[None, :]
        if ATOMIC:
            tl.atomic_add(out, acc, mask=mask)
        else:
            tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask)
    pdl_epilogue(PDL)


@dataclass(frozen=True)
class GemvConfig:
    """One launch of the kernel (what the tuner sweeps)."""

    block_n: int = 32
    block_k: int = 256
    num_warps: int = 4
    num_stages: int = 3
    split_k: int = 1
    fma: bool = False  # m == 1 only

    @classmethod
    def of(cls, d: dict) -> GemvConfig:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def to_dict(self) -> dict:
        return asdict(self)


DEFAULT = GemvConfig()


def skinny_linear(x: torch.Tensor, weight: torch.Tensor, config: GemvConfig = DEFAULT
                  ) -> torch.Tensor:
    """The kernel itself: x [m, K] (m <= 16), weight [N, K] with unit stride along K,
    same dtype -> [m, N] in x's dtype."""
    if (x.dim() != 2 or weight.dim() != 2 or not 0 < x.shape[0] <= MAX_M
            or weight.shape[1] != x.shape[1]):
        raise ValueError(f"skinny_linear takes x [0 < m <= {MAX_M}, K] and W [N, K]; got x "
                         f"{tuple(x.shape)}, W {tuple(weight.shape)}")
    if weight.stride(1) != 1 or x.dtype != weight.dtype:
        # the kernel walks W's rows as contiguous K: a transposed view would be misread
        raise ValueError(f"skinny_linear needs W with unit stride along K and x's dtype; got "
                         f"W strides {weight.stride()}, dtypes {x.dtype} and {weight.dtype}")
    m, k = x.shape
    n = weight.shape[0]
    fma = config.fma and m == 1
    block_m = 1 if fma else 16
    split = max(1, config.split_k)
    # K per split: a multiple of BLOCK_K, so every program's tiles stay aligned
    k_per_split = cdiv(cdiv(k, split), config.block_k) * config.block_k
    split = cdiv(k, k_per_split)
    x = x.contiguous()
    atomic = split > 1
    out = (torch.zeros(m, n, dtype=torch.float32, device=x.device) if atomic
           else torch.empty(m, n, dtype=x.dtype, device=x.device))
    upcast = interpreting() and x.dtype == torch.bfloat16
    # fp32 as cuBLAS does it by default (no TF32); half types ignore it (tf32: Triton's default)
    precision = "ieee" if x.dtype == torch.float32 else "tf32"
    grid = (cdiv(n, config.block_n), split)
    args = (x, weight, out, m, n, k, k_per_split, x.stride(0), weight.stride(0), out.stride(0))
    constexprs = (("BLOCK_M", block_m), ("BLOCK_N", config.block_n),
                  ("BLOCK_K", config.block_k), ("FMA", fma), ("ATOMIC", atomic),
                  ("UPCAST", upcast), ("DOT_PRECISION", precision),
                  ("num_warps", config.num_warps),
                  ("num_stages", config.num_stages))
    launch(_skinny_kernel, grid, args, constexprs,
           ("skinny", constexprs, arg_key(args), interpreting()))
    return out.to(x.dtype) if atomic else out


def linear_ref(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """fp32 reference of ``x W^T``, rounded to x's dtype."""
    return (x.float() @ weight.float().T).to(x.dtype)


# ---- the per-GPU table ------------------------------------------------------------------
def read_tables(path: Path = TABLES) -> dict:
    """{device name: {"N,K": entry}}; a missing file is no table; a broken one an error."""
    if not path.exists():
        return {}
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); rerun "
                         "python -m twinfer.calibration.gemv_tune or delete it") from None
    if not isinstance(doc, dict) or not all(isinstance(v, dict) for v in doc.values()):
        raise ValueError(f"{path}: expected {{device name: {{'N,K': entry}}}}; rerun "
                         "python -m twinfer.calibration.gemv_tune or delete it")
    return doc


@dataclass(frozen=True)
class Choice:
    """What the table says for one (N, K): the launch for one row, for more rows, and up
    to how many rows the kernel beats cuBLAS (0: never)."""

    one_row: GemvConfig
    rows: GemvConfig
    max_m: int


@functools.cache
def _device_table(device_name: str, path: str = str(TABLES)) -> dict[tuple[int, int], Choice]:
    entries = read_tables(Path(path)).get(device_name, {})
    out = {}
    for key, e in entries.items():
        n, k = (int(v) for v in key.split(","))
        out[(n, k)] = Choice(GemvConfig.of(e["one_row"]), GemvConfig.of(e["rows"]),
                             int(e["max_m"]))
    return out


def lookup(device_name: str, n: int, k: int, m: int, path: Path = TABLES
           ) -> GemvConfig | None:
    """The table's launch for m rows of an [n, k] weight on this GPU type, or None where
    the table has no entry or cuBLAS won at some m' <= m."""
    hit = _device_table(device_name, str(path)).get((n, k))
    if hit is None or m > hit.max_m:
        return None
    return hit.one_row if m == 1 else hit.rows


@functools.cache
def _device_name(index: int) -> str:
    return torch.cuda.get_device_name(index)


def kernel_takes(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `skinny_linear` can run this call: x [1..16, K], W [N, K] of the same
    dtype, W contiguous (a weight is never copied per call)."""
    return (x.dim() == 2 and weight.dim() == 2 and 0 < x.shape[0] <= MAX_M
            and weight.shape[1] == x.shape[1] and x.dtype == weight.dtype
            and x.dtype in (torch.bfloat16, torch.float16, torch.float32)
            and weight.is_contiguous())


def _mode() -> str:
    """``TWINFER_GEMV``: "off" (also 0/false/no), "force", or "" (the table decides)."""
    mode = os.environ.get(ENV, "").lower()
    return "off" if mode in ("off", "0", "false", "no") else mode


def choice_for(x: torch.Tensor, weight: torch.Tensor) -> GemvConfig | None:
    """The kernel's launch for this call in auto mode, or None for cuBLAS. Half types only:
    the table was timed in bf16 (fp16 moves the same bytes), and fp32 would stream twice
    the bytes the table measured."""
    mode = _mode()
    if mode == "off" or not kernel_takes(x, weight) or x.dtype == torch.float32:
        return None
    m = x.shape[0]
    if mode == "force":
        return GemvConfig(fma=m == 1)
    if not x.is_cuda:
        return None
    index = x.device.index if x.device.index is not None else torch.cuda.current_device()
    return lookup(_device_name(index), *weight.shape, m)


def linear(x: torch.Tensor, weight: torch.Tensor, *, backend: Backend = "auto") -> torch.Tensor:
    """``F.linear(x, weight)`` (no bias). x: [m, K]; weight: [N, K] -> [m, N].

    - ``"auto"``: the skinny kernel where this GPU's table (or ``TWINFER_GEMV=force``)
      says so, for bf16/fp16 on CUDA (or under the interpreter, where only "force" applies);
      else ``F.linear``.
    - ``"triton"``: the kernel (the table's launch, else the default one) wherever
      `kernel_takes` the call, fp32 included; ``F.linear`` for the rest (m > 16, ...).
      ``TWINFER_GEMV=off`` still means cuBLAS.
    - ``"torch"``: ``F.linear``.
    """
    if backend == "torch" or (backend == "auto" and not (x.is_cuda or interpreting())):
        return F.linear(x, weight)
    config = choice_for(x, weight)
    if config is not None:
        return skinny_linear(x, weight, config)
    if (backend == "triton" and use_triton(backend, x) and kernel_takes(x, weight)
            and _mode() != "off"):
        return skinny_linear(x, weight, GemvConfig(fma=x.shape[0] == 1))
    return F.linear(x, weight)
