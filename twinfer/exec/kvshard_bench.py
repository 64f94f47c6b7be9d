"""KV-sharded decode attention: correctness and side-by-side timing of the variants.

The twin of Iris's ``examples/10_flash_decode/test/test_sp_fd.py``. Launch it with
one rank per GPU (or two CPU ranks with gloo):

    mpirun --allow-run-as-root -np 2 python -m twinfer.exec.kvshard_bench --case correctness
    mpirun --allow-run-as-root -np 2 python -m twinfer.exec.kvshard_bench --case compare \\
        --out kvshard_compare.json

``correctness``: every variant (`twinfer.exec.kvshard_comm.VARIANTS`; ``fused`` only on
GPUs) against a single-device reference on the full cache, with flash-attention's
criterion (error vs float64 at most twice torch's own error in the same precision).
``compare``: batch x context grid, Llama-3-8B-like heads (32 query / 8 KV / 128),
bf16; the median time per call of each variant (the maximum over ranks of each
rank's median), the local partial attention alone as the floor, and the speedup of
``fused`` over ``allgather``. Rank 0 prints a table and writes the results JSON.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # NVLink multicast stays off
os.environ["TORCH_SYMM_MEM_DISABLE_MULTICAST"] = "1"

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from twinfer.exec.kvshard_comm import (  # noqa: E402
    VARIANTS,
    CommContext,
    local_partial,
    make_attention,
)
from twinfer.exec.kvshard_dist import DistEnv, init_from_mpi, versions  # noqa: E402
from twinfer.kernels.decode import flash_decode, flash_decode_ref  # noqa: E402
from twinfer.kernels.peer_combine import KvShard  # noqa: E402
from twinfer.spec.io import write_json_atomic


@dataclass(frozen=True)
class Heads:
    q_heads: int
    kv_heads: int
    head_dim: int


LLAMA3_8B = Heads(32, 8, 128)
CPU_HEADS = Heads(8, 2, 64)


def _variants(env: DistEnv, only: list[str] | None) -> list[str]:
    names = [v for v in VARIANTS if env.device.type == "cuda" or v != "fused"]
    return [v for v in names if not only or v in only]


def _randn(shape: tuple[int, ...], gen: torch.Generator, env: DistEnv, dtype: torch.dtype):
    return torch.randn(shape, generator=gen, device=env.device, dtype=torch.float32).to(dtype)


# ---- correctness ------------------------------------------------------------------------
def _max_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    finite = torch.isfinite(ref)
    if not torch.equal(torch.isfinite(x), finite):
        return float("inf")
    return (x.double() - ref)[finite].abs().max().item() if finite.any() else 0.0


def _check_case(env: DistEnv, batch: int, context: int, args: argparse.Namespace) -> list[dict]:
    heads, dtype = args.heads, args.dtype
    world, rank = env.world, env.rank
    chunk = -(-context // world)
    gen = torch.Generator(device=env.device).manual_seed(1000 + context + batch)
    q = _randn((batch, heads.q_heads, heads.head_dim), gen, env, dtype)
    # Padded to world * chunk so every rank's shard has the same capacity.
    k, v = (_randn((batch, heads.kv_heads, world * chunk, heads.head_dim), gen, env, dtype)
            for _ in range(2))
    # Unequal lengths: the shortest sequence leaves the later shards empty.
    lens = torch.tensor([context, max(1, context - 5), max(1, chunk // 3)][:batch] +
                        [context] * max(0, batch - 3), device=env.device)
    ref64 = flash_decode_ref(q.double(), k.double(), v.double(), lens)
    lowp = flash_decode_ref(q, k, v, lens, compute_dtype=dtype)
    err_torch = max(_max_err(lowp[0], ref64[0]), _max_err(lowp[1], ref64[1]))
    shard = KvShard(k[:, :, rank * chunk:(rank + 1) * chunk],
                    v[:, :, rank * chunk:(rank + 1) * chunk],
                    (lens - rank * chunk).clamp(0, chunk).to(torch.int32))
    ctx = CommContext(env.group, env.mpi_comm)
    runs = {"single": lambda: flash_decode(q, k, v, lens)}
    for name in _variants(env, args.variants):
        attend = make_attention(name, ctx, env.device)
        runs[name] = lambda attend=attend: attend(q, shard)
    rows = []
    for name, run in runs.items():
        out, lse = run()
        err = max(_max_err(out, ref64[0]), _max_err(lse, ref64[1]))
        ok = err <= 2.0 * err_torch + args.atol
        rows.append(dict(variant=name, batch=batch, context=context, rank=rank,
                         max_abs_err=err, torch_err=err_torch, ok=bool(ok)))
    return rows


def run_correctness(env: DistEnv, args: argparse.Namespace) -> dict:
    rows = [row for batch in args.batches for context in args.contexts
            for row in _check_case(env, batch, context, args)]
    everyone = [r for part in env.mpi_comm.allgather(rows) for r in part]
    return dict(case="correctness", ok=all(r["ok"] for r in everyone), results=everyone)


# ---- compare ---------------------------------------------------------------------------
def _time_us(env: DistEnv, fn, iters: int, warmup: int) -> float:
    """Median wall time of ``fn`` in microseconds; ranks start each call together."""
    for _ in range(warmup):
        fn()
    cuda = env.device.type == "cuda"
    samples = []
    for _ in range(iters):
        if cuda:
            torch.cuda.synchronize(env.device)
        env.mpi_comm.Barrier()
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) * 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(samples)


def _compare_case(env: DistEnv, batch: int, context: int, args: argparse.Namespace) -> dict:
    heads, dtype = args.heads, args.dtype
    chunk = -(-context // env.world)
    gen = torch.Generator(device=env.device).manual_seed(7 + env.rank)
    q_gen = torch.Generator(device=env.device).manual_seed(7)
    q = _randn((batch, heads.q_heads, heads.head_dim), q_gen, env, dtype)
    shape = (batch, heads.kv_heads, chunk, heads.head_dim)
    shard = KvShard(_randn(shape, gen, env, dtype), _randn(shape, gen, env, dtype),
                    torch.full((batch,), chunk, dtype=torch.int32, device=env.device))
    ctx = CommContext(env.group, env.mpi_comm)
    fns = {"local": lambda: local_partial(q, shard)}
    for name in _variants(env, args.variants):
        attend = make_attention(name, ctx, env.device)
        fns[name] = lambda attend=attend: attend(q, shard)
    times = {}
    for name, fn in fns.items():
        mine = _time_us(env, fn, args.iters, args.warmup)
        times[name] = max(env.mpi_comm.allgather(mine))
    row = dict(batch=batch, context=context, shard_tokens=chunk, median_us=times,
               exchanged_bytes_per_rank=batch * heads.q_heads * (heads.head_dim + 1) * 4)
    if "fused" in times and "allgather" in times:
        row["speedup_fused_vs_allgather"] = times["allgather"] / times["fused"]
    if "fused" in times and "mpi" in times:
        row["speedup_fused_vs_mpi"] = times["mpi"] / times["fused"]
    fns.clear()
    if env.device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def run_compare(env: DistEnv, args: argparse.Namespace) -> dict:
    rows = [_compare_case(env, b, c, args) for b in args.batches for c in args.contexts]
    return dict(case="compare", ok=True, iters=args.iters, warmup=args.warmup, results=rows)


# ---- reporting and entry point ---------------------------------------------------------
def format_table(report: dict) -> str:
    lines = []
    if report["case"] == "correctness":
        lines.append(f"{'variant':<10} {'batch':>5} {'context':>8} {'rank':>4} "
                     f"{'max err':>10} {'torch err':>10}  ok")
        for r in report["results"]:
            lines.append(f"{r['variant']:<10} {r['batch']:>5} {r['context']:>8} {r['rank']:>4} "
                         f"{r['max_abs_err']:>10.3g} {r['torch_err']:>10.3g}  {r['ok']}")
        lines.append("PASS" if report["ok"] else "FAIL")
        return "\n".join(lines)
    names = list(report["results"][0]["median_us"]) if report["results"] else []
    lines.append(f"{'batch':>5} {'context':>8} " + " ".join(f"{n + ' us':>12}" for n in names)
                 + f" {'fused/ag':>9}")
    for r in report["results"]:
        speed = r.get("speedup_fused_vs_allgather")
        lines.append(f"{r['batch']:>5} {r['context']:>8} "
                     + " ".join(f"{r['median_us'][n]:>12.1f}" for n in names)
                     + (f" {speed:>8.2f}x" if speed else f" {'-':>9}"))
    return "\n".join(lines)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m twinfer.exec.kvshard_bench",
                                description=__doc__.splitlines()[0])
    p.add_argument("--case", choices=("correctness", "compare"), required=True)
    p.add_argument("--out", type=Path, help="results JSON (written by rank 0)")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--batches", type=int, nargs="+")
    p.add_argument("--contexts", type=int, nargs="+")
    p.add_argument("--variants", nargs="+", choices=VARIANTS)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    args = p.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = args.device == "cuda"
    args.heads = LLAMA3_8B if gpu else CPU_HEADS
    args.dtype = torch.bfloat16 if gpu else torch.float32
    args.atol = 1e-5 if gpu else 1e-6
    if args.case == "compare":
        args.batches = args.batches or ([1, 8, 32] if gpu else [1, 4])
        args.contexts = args.contexts or ([8192, 32768, 131072] if gpu else [1024, 4096])
    else:
        args.batches = args.batches or ([1, 8] if gpu else [1, 3])
        args.contexts = args.contexts or ([1000, 16389] if gpu else [37, 300])
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    env = init_from_mpi(args.device)
    try:
        report = (run_correctness if args.case == "correctness" else run_compare)(env, args)
        report.update(world=env.world, device=env.device_name, dtype=str(args.dtype),
                      heads=vars(args.heads), versions=versions())
        if env.rank == 0:
            print(format_table(report), flush=True)
            if args.out:
                write_json_atomic(args.out, report)
        env.mpi_comm.Barrier()
        dist.destroy_process_group()
        return 0 if report["ok"] else 1
    except Exception as exc:  # one rank failing must not leave the others hanging
        print(f"rank {env.rank}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        env.mpi_comm.Abort(1)
        return 1


if __name__ == "__main__":
    sys.exit(main())
