"""Benchmark of prefill attention, the paged KV append, RMSNorm and RoPE (see `bench`).

Prefill: the varlen Triton kernel on a packed batch versus torch SDPA (flash backend,
``is_causal``, ``enable_gqa``) called once per prompt, the way the torch reference runs.
RMSNorm / RoPE: the Triton kernels versus the torch references (and ``F.rms_norm``).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from twinfer.kernels.norm_rope import (
    add_rmsnorm,
    apply_rope,
    rmsnorm,
    rmsnorm_ref,
    rope_cos_sin,
    rope_ref,
)
from twinfer.kernels.paged import paged_kv_append
from twinfer.kernels.prefill import prefill_attention

PREFILL_CASES = {
    "gqa 8 mixed 512..4096": (32, 8, [512 * i for i in range(1, 9)]),
    "gqa 1 x 8192": (32, 8, [8192]),
    "gqa 32 x 512": (32, 8, [512] * 32),
    "gqa 16 x 100..1600": (32, 8, [100 * i for i in range(1, 17)]),
    "mha 8 mixed 512..4096": (32, 32, [512 * i for i in range(1, 9)]),
}
NORM_TOKENS = (1, 16, 256, 4096, 16384)


def _sdpa_loop(q, k, v, bounds):
    gqa = q.shape[1] != k.shape[1]
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        qs, ks, vs = (x[start:end].transpose(0, 1).unsqueeze(0) for x in (q, k, v))
        F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=gqa)


def bench_prefill(time_ms, quick, device) -> list[dict]:
    rows = []
    for name, (q_heads, kv_heads, lengths) in PREFILL_CASES.items():
        tokens = sum(lengths)
        q = torch.randn(tokens, q_heads, 128, dtype=torch.bfloat16, device=device)
        k = torch.randn(tokens, kv_heads, 128, dtype=torch.bfloat16, device=device)
        v = torch.randn_like(k)
        bounds = [0, *torch.tensor(lengths).cumsum(0).tolist()]
        cu = torch.tensor(bounds, dtype=torch.int32, device=device)
        flops = 4 * 128 * q_heads * sum(n * (n + 1) / 2 for n in lengths)
        row = {"case": name, "tokens": tokens}
        row["triton_us"] = 1e3 * time_ms(functools.partial(
            prefill_attention, q, k, v, cu, max_seqlen=max(lengths)), quick)
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            row["sdpa_loop_us"] = 1e3 * time_ms(functools.partial(_sdpa_loop, q, k, v, bounds),
                                                quick)
        row["triton_tflops"] = flops / row["triton_us"] / 1e6
        row["sdpa_tflops"] = flops / row["sdpa_loop_us"] / 1e6
        row["speedup"] = row["sdpa_loop_us"] / row["triton_us"]
        # K/V of the whole batch into 16-token pages (what prefill_attention adds).
        k_pages = torch.empty(tokens // 16 + 1, 16, kv_heads, 128, dtype=torch.bfloat16,
                              device=device)
        v_pages = torch.empty_like(k_pages)
        slots = torch.randperm(k_pages.shape[0] * 16, device=device)[:tokens]
        row["append_us"] = 1e3 * time_ms(functools.partial(
            paged_kv_append, k_pages, v_pages, k, v, slots), quick)
        row["append_gbps"] = 4 * k.numel() * 2 / row["append_us"] / 1e3  # read + write, K+V
        rows.append(row)
        print(f"prefill {name:24} triton {row['triton_us']:9.1f} us "
              f"({row['triton_tflops']:5.0f} TF/s)  sdpa loop {row['sdpa_loop_us']:9.1f} us "
              f"({row['sdpa_tflops']:5.0f} TF/s)  x{row['speedup']:.2f}  "
              f"append {row['append_us']:.1f} us", flush=True)
    return rows


def bench_norm_rope(time_ms, quick, device, cpu_us=None) -> list[dict]:
    rows = []
    hidden, q_heads, kv_heads, head_dim = 4096, 32, 8, 128
    w = torch.randn(hidden, dtype=torch.bfloat16, device=device)
    table = rope_cos_sin(131072, head_dim, theta=500000.0, device=device)
    for tokens in NORM_TOKENS:
        x = torch.randn(tokens, hidden, dtype=torch.bfloat16, device=device)
        res = torch.randn_like(x)
        q = torch.randn(tokens, q_heads, head_dim, dtype=torch.bfloat16, device=device)
        k = torch.randn(tokens, kv_heads, head_dim, dtype=torch.bfloat16, device=device)
        pos = torch.randint(0, 131072, (tokens,), device=device)
        cases = {
            "rmsnorm": {
                "triton": functools.partial(rmsnorm, x, w, backend="triton"),
                "torch_ref": functools.partial(rmsnorm_ref, x, w),
                "F.rms_norm": functools.partial(F.rms_norm, x, (hidden,), w, 1e-5),
            },
            "add_rmsnorm": {
                "triton": functools.partial(add_rmsnorm, x, res, w, backend="triton"),
                "torch_ref": functools.partial(rmsnorm_ref, x, w, residual=res),
                "add+F.rms_norm": lambda x=x, res=res: F.rms_norm(x + res, (hidden,), w, 1e-5),
            },
            "rope": {
                "triton": functools.partial(apply_rope, q, k, pos, table, backend="triton"),
                "torch_ref": functools.partial(rope_ref, q, k, pos, table),
            },
        }
        for op, impls in cases.items():
            row = {"op": op, "tokens": tokens}
            for impl, fn in impls.items():
                row[f"{impl}_us"] = 1e3 * time_ms(fn, quick)
                if cpu_us is not None:
                    row[f"{impl}_cpu"] = cpu_us(fn)
            best_torch = min(v for key, v in row.items() if key.endswith("_us")
                             and not key.startswith("triton"))
            row["speedup_vs_best_torch"] = best_torch / row["triton_us"]
            rows.append(row)
            print(f"{op:12} tokens {tokens:6}: " + "  ".join(
                f"{key[:-3]} {val:8.1f} us" for key, val in row.items() if key.endswith("_us"))
                + f"  x{row['speedup_vs_best_torch']:.2f}", flush=True)
    return rows


def bench_ops(quick: bool, time_ms, device="cuda", cpu_us=None) -> dict:
    """Prefill and norm/RoPE tables; ``cpu_us(fn)`` (optional) adds host launch costs."""
    return {"prefill": bench_prefill(time_ms, quick, device),
            "norm_rope": bench_norm_rope(time_ms, quick, device, cpu_us)}
