"""Benchmark of the decode kernels against torch SDPA and the device's copy bandwidth.

    python -m twinfer.kernels.bench [--quick] [--sweep [splits,tiles]] [--json OUT]
                                    [--only decode,ops]

Decode shapes: Llama-3-8B-like GQA (32 query heads, 8 KV heads, head_dim 128) and MHA
(32/32), batch {1, 8, 32, 64} x context {1K, 8K, 32K, 128K}, bf16, every sequence at
full context; shapes whose KV cache does not fit in free memory are skipped. For each:
median time (triton.testing.do_bench, which clears L2 before every repetition; inputs
smaller than 4x L2 are also rotated among copies), GB/s of K+V read, % of the measured
device copy bandwidth (bytes read + written by a large device-to-device copy, same
run), the ratio to torch SDPA (flash backend, ``enable_gqa=True``, q as [B, H, 1, D],
same tensors) and the paged kernel (pages of 16 and 64 tokens, shuffled block table)
relative to the contiguous one. Each timing also has a CUDA-graph twin (device time
without host launch cost) and, for small shapes, the host microseconds per call.
``--sweep`` adds the split-count and tile sweeps that chose the defaults. ``--only ops``
runs prefill / RMSNorm / RoPE (`bench_ops`).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import itertools
import json
import statistics
import sys
import time
import traceback

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench

from twinfer.kernels.decode import DecodeTiles, flash_decode, paged_flash_decode

GIB = 1 << 30
DEVICE = "cuda"  # a module constant so that a CPU smoke test can swap it
SHAPES = {"gqa": (32, 8, 128), "mha": (32, 32, 128)}  # q_heads, kv_heads, head_dim


def time_ms(fn, quick=False) -> float:
    """Median milliseconds of fn() (L2 cleared before every repetition)."""
    warmup, rep = (10, 30) if quick else (25, 100)
    return float(do_bench(fn, warmup=warmup, rep=rep, quantiles=[0.5]))


def graph_ms(calls, reps=20) -> float:
    """Median milliseconds per call when one CUDA graph makes every call in ``calls`` (one
    per rotated input set): device time, free of CPU launch overhead."""
    if DEVICE != "cuda":  # the CPU smoke test of this script
        for call in calls:
            call()
        return 1.0
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for call in calls:  # warm-up outside the capture (compilation, allocator)
            call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    graph.replay()
    times = []
    for _ in range(reps):
        start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / len(calls))
    return statistics.median(times)


def cpu_us(fn, n=200) -> float:
    """Host microseconds per call (launch overhead: Python, argument binding, driver)."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return 1e6 * elapsed / n


def rotating(make, nbytes: int):
    """Copies of the inputs from make(), enough that consecutive calls touch > 4x L2."""
    l2 = torch.cuda.get_device_properties(0).L2_cache_size if DEVICE == "cuda" else 1 << 20
    count = 1 if nbytes >= 4 * l2 else min(64, -(-4 * l2 // max(nbytes, 1)))
    sets = [make() for _ in range(count)]
    cycle = itertools.cycle(sets)
    return sets, lambda: next(cycle)


def device_info() -> dict:
    props = torch.cuda.get_device_properties(0)
    return {
        "name": props.name, "sms": props.multi_processor_count,
        "memory_gib": round(props.total_memory / GIB, 1), "l2_mib": props.L2_cache_size >> 20,
        "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def copy_bandwidth(quick: bool) -> dict:
    """Device-to-device copy of a 2 GiB buffer: bytes read + written per second."""
    nbytes = GIB if quick else 2 * GIB
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=DEVICE).normal_()
    dst = torch.empty_like(src)
    ms = time_ms(functools.partial(dst.copy_, src), quick)
    return {"bytes": nbytes, "ms": ms, "gbps": 2 * nbytes / ms / 1e6}


def _decode_inputs(batch, q_heads, kv_heads, ctx, head_dim):
    q = torch.randn(batch, q_heads, head_dim, dtype=torch.bfloat16, device=DEVICE)
    k = torch.randn(batch, kv_heads, ctx, head_dim, dtype=torch.bfloat16, device=DEVICE)
    return q, k, torch.randn_like(k)


def _paged_inputs(batch, kv_heads, ctx, head_dim):
    """Random K and V pages of 16 tokens; a 64-token layout is a view of the same memory."""
    shape = (batch * ctx // 16, 16, kv_heads, head_dim)
    k = torch.randn(shape, dtype=torch.bfloat16, device=DEVICE)
    return k, torch.randn_like(k)


def _table(batch, ctx, page_size, gen):
    """A shuffled block table: logically consecutive pages are scattered in memory."""
    blocks = ctx // page_size
    table = torch.randperm(batch * blocks, generator=gen).view(batch, blocks)
    return table.to(device=DEVICE, dtype=torch.int32)


def _sdpa(q, k, v):
    return F.scaled_dot_product_attention(q.unsqueeze(2), k, v,
                                          enable_gqa=q.shape[1] != k.shape[1]).squeeze(2)


def _contiguous_phase(row, dims, seq_lens, kv_bytes, quick):
    """Triton on a contiguous cache, then SDPA (flash) on the very same tensors."""
    sets, nxt = rotating(lambda: _decode_inputs(*dims), kv_bytes)
    row["triton_us"] = 1e3 * time_ms(lambda: flash_decode(*nxt(), seq_lens), quick)
    row["triton_graph_us"] = 1e3 * graph_ms(
        [functools.partial(flash_decode, *s, seq_lens) for s in sets])
    if kv_bytes < 256 << 20:
        row["triton_cpu_us"] = cpu_us(functools.partial(flash_decode, *sets[0], seq_lens))
    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            row["sdpa_us"] = 1e3 * time_ms(lambda: _sdpa(*nxt()), quick)
            row["sdpa_graph_us"] = 1e3 * graph_ms([functools.partial(_sdpa, *s) for s in sets])
            if kv_bytes < 256 << 20:
                row["sdpa_cpu_us"] = cpu_us(functools.partial(_sdpa, *sets[0]))
            ref = _sdpa(*sets[0])
        row["speedup"] = row["sdpa_us"] / row["triton_us"]
        row["graph_speedup"] = row["sdpa_graph_us"] / row["triton_graph_us"]
        out, _ = flash_decode(*sets[0], seq_lens)
        row["max_diff_vs_sdpa"] = (out.float() - ref.float()).abs().max().item()
    except RuntimeError as err:  # e.g. no flash backend for this shape
        row["sdpa_error"] = str(err).splitlines()[0][:200]
    return sets[0][0]


def _paged_phase(row, q, dims, seq_lens, kv_bytes, quick, page_sizes):
    """The paged kernel on freshly drawn pages (the tests check values, not this)."""
    batch, _, kv_heads, ctx, head_dim = dims
    gen = torch.Generator().manual_seed(0)
    sets, nxt = rotating(lambda: _paged_inputs(batch, kv_heads, ctx, head_dim), kv_bytes)
    for page_size in page_sizes:
        table = _table(batch, ctx, page_size, gen)

        def paged_fn(pages, page_size=page_size, table=table):
            k16, v16 = pages
            k_pages = k16.view(-1, page_size, kv_heads, head_dim)
            v_pages = v16.view(-1, page_size, kv_heads, head_dim)
            return paged_flash_decode(q, k_pages, v_pages, table, seq_lens)

        key = f"paged{page_size}"
        row[f"{key}_us"] = 1e3 * time_ms(lambda f=paged_fn: f(nxt()), quick)
        row[f"{key}_vs_contig"] = row[f"{key}_us"] / row["triton_us"]
        row[f"{key}_graph_us"] = 1e3 * graph_ms([functools.partial(paged_fn, s) for s in sets])
        row[f"{key}_graph_vs_contig"] = row[f"{key}_graph_us"] / row["triton_graph_us"]


def bench_decode_shape(name, batch, ctx, copy_gbps, quick, page_sizes=(16, 64)) -> dict:
    q_heads, kv_heads, head_dim = SHAPES[name]
    dims = (batch, q_heads, kv_heads, ctx, head_dim)
    kv_bytes = 2 * batch * kv_heads * ctx * head_dim * 2
    row = {"shape": name, "batch": batch, "ctx": ctx, "kv_gib": kv_bytes / GIB}
    seq_lens = torch.full((batch,), ctx, dtype=torch.int32, device=DEVICE)
    q = _contiguous_phase(row, dims, seq_lens, kv_bytes, quick)
    row["gbps"] = kv_bytes / row["triton_us"] / 1e3
    row["pct_copy"] = 100 * row["gbps"] / copy_gbps
    row["graph_gbps"] = kv_bytes / row["triton_graph_us"] / 1e3
    row["graph_pct_copy"] = 100 * row["graph_gbps"] / copy_gbps
    torch.cuda.empty_cache()
    _paged_phase(row, q, dims, seq_lens, kv_bytes, quick, page_sizes)
    torch.cuda.empty_cache()
    return row


def fits(name, batch, ctx) -> bool:
    _, kv_heads, head_dim = SHAPES[name]
    kv_bytes = 2 * batch * kv_heads * ctx * head_dim * 2
    free, _ = torch.cuda.mem_get_info()
    return kv_bytes * 1.1 + 2 * GIB < free


def _split_row(name, batch, ctx):
    q_heads, kv_heads, head_dim = SHAPES[name]
    kv_bytes = 2 * batch * kv_heads * ctx * head_dim * 2
    sets, _ = rotating(lambda: _decode_inputs(batch, q_heads, kv_heads, ctx, head_dim),
                       kv_bytes)
    seq_lens = torch.full((batch,), ctx, dtype=torch.int32, device=DEVICE)

    def timed(**kw):
        return 1e3 * graph_ms([functools.partial(flash_decode, *s, seq_lens, **kw)
                               for s in sets], reps=10)

    times = {s: timed(num_splits=s) for s in SPLIT_SWEEP}
    best = min(times, key=times.get)
    return {"shape": name, "batch": batch, "ctx": ctx, "graph_us_by_splits": times,
            "best_splits": best, "default_graph_us": timed()}


def sweep_splits() -> list[dict]:
    """Graph-time stage 1 + merge for split counts 1..128 (the heuristic's ground truth)."""
    rows = []
    cases = [("gqa", b, c) for b in (1, 8, 32, 64) for c in (1024, 8192, 32768, 131072)]
    cases += [("mha", b, c) for b in (1, 8, 32) for c in (1024, 8192, 32768)]
    for name, batch, ctx in cases:
        if fits(name, batch, ctx):
            rows.append(_split_row(name, batch, ctx))
            r = rows[-1]
            print(f"splits {name} b={batch} ctx={ctx}: best {r['best_splits']} "
                  f"({r['graph_us_by_splits'][r['best_splits']]:.1f} us), default "
                  f"{r['default_graph_us']:.1f} us", flush=True)
            torch.cuda.empty_cache()
    return rows


SPLIT_SWEEP = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)
TILE_SWEEP = {
    "contiguous": [DecodeTiles(n, 4, st) for n in (32, 64, 128) for st in (2, 3, 4)]
    + [DecodeTiles(64, 8, 3), DecodeTiles(128, 8, 3)],
    "paged16": [DecodeTiles(n, 4, st) for n in (64, 128) for st in (2, 3, 4)],
    "paged64": [DecodeTiles(64, 4, 3), DecodeTiles(128, 4, 3), DecodeTiles(128, 4, 4)],
}


def _tile_rows(name, batch, ctx):
    q_heads, kv_heads, head_dim = SHAPES[name]
    q, k, v = _decode_inputs(batch, q_heads, kv_heads, ctx, head_dim)
    k16, v16 = _paged_inputs(batch, kv_heads, ctx, head_dim)
    gen = torch.Generator().manual_seed(0)
    seq_lens = torch.full((batch,), ctx, dtype=torch.int32, device=DEVICE)
    runs = {
        "contiguous": functools.partial(flash_decode, q, k, v, seq_lens),
        "paged16": functools.partial(paged_flash_decode, q, k16, v16,
                                     _table(batch, ctx, 16, gen), seq_lens),
        "paged64": functools.partial(
            paged_flash_decode, q, k16.view(-1, 64, kv_heads, head_dim),
            v16.view(-1, 64, kv_heads, head_dim), _table(batch, ctx, 64, gen), seq_lens),
    }
    rows = []
    for layout, configs in TILE_SWEEP.items():
        for tiles in configs:
            row = {"shape": name, "batch": batch, "ctx": ctx, "layout": layout,
                   "tiles": [tiles.block_n, tiles.num_warps, tiles.num_stages]}
            try:
                row["graph_us"] = 1e3 * graph_ms([functools.partial(runs[layout], tiles=tiles)],
                                                 reps=10)
                print(f"tiles {name} b={batch} ctx={ctx} {layout} {tiles}: "
                      f"{row['graph_us']:.1f} us", flush=True)
            except Exception as err:  # out of shared memory, for instance
                row["error"] = str(err).splitlines()[0][:200]
            rows.append(row)
    return rows


def sweep_tiles() -> list[dict]:
    """Time stage-1 tile configurations on a few shapes, contiguous and paged."""
    rows = []
    for name, batch, ctx in (("gqa", 1, 32768), ("gqa", 32, 8192), ("mha", 8, 32768)):
        rows += _tile_rows(name, batch, ctx)
        torch.cuda.empty_cache()
    return rows


def print_decode_table(rows) -> None:
    nan = float("nan")
    print(f"{'shape':5} {'batch':>5} {'ctx':>7} | {'triton_us':>9} {'GB/s':>6} {'%copy':>6} "
          f"{'sdpa_us':>9} {'x_sdpa':>6} | graph: {'triton':>8} {'sdpa':>8} {'x':>5} "
          f"{'%copy':>6} | {'pg16/c':>6} {'pg64/c':>6} | {'cpu_us':>6}")
    for r in rows:
        print(f"{r['shape']:5} {r['batch']:>5} {r['ctx']:>7} | {r['triton_us']:>9.1f} "
              f"{r['gbps']:>6.0f} {r['pct_copy']:>6.1f} {r.get('sdpa_us', nan):>9.1f} "
              f"{r.get('speedup', nan):>6.2f} |        {r['triton_graph_us']:>8.1f} "
              f"{r.get('sdpa_graph_us', nan):>8.1f} {r.get('graph_speedup', nan):>5.2f} "
              f"{r['graph_pct_copy']:>6.1f} | {r.get('paged16_vs_contig', nan):>6.3f} "
              f"{r.get('paged64_vs_contig', nan):>6.3f} | {r.get('triton_cpu_us', nan):>6.1f}",
              flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes, shorter timing")
    parser.add_argument("--sweep", nargs="?", const="splits,tiles", default="",
                        help="also sweep: splits, tiles (comma list; default both)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--only", default="decode,ops", help="comma list: decode, ops")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench needs a CUDA GPU", file=sys.stderr)
        return 2
    sections = set(args.only.split(","))
    results = {"device": device_info()}

    def save():
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(results, fh, indent=1)

    print(results["device"], flush=True)
    results["copy"] = copy_bandwidth(args.quick)
    print(f"copy bandwidth (read+write): {results['copy']['gbps']:.0f} GB/s", flush=True)
    save()
    # Each section runs on its own: a failure is recorded and the next section still runs.
    steps = []
    if "decode" in sections:
        steps.append(("decode", lambda: decode_table(args.quick, results["copy"]["gbps"], save,
                                                      results)))
    sweeps = set(filter(None, args.sweep.split(",")))
    if "splits" in sweeps:
        steps.append(("sweep_splits", sweep_splits))
    if "tiles" in sweeps:
        steps.append(("sweep_tiles", sweep_tiles))
    if "ops" in sections:
        from twinfer.kernels.bench_ops import bench_ops

        steps.append(("ops", lambda: bench_ops(args.quick, time_ms, DEVICE, cpu_us)))
    failed = False
    for key, step in steps:
        try:
            results[key] = step()
        except Exception:  # keep the other sections' figures
            results[f"{key}_error"] = traceback.format_exc()
            print(results[f"{key}_error"], file=sys.stderr, flush=True)
            failed = True
        save()
    return 1 if failed else 0


def decode_table(quick, copy_gbps, save, results) -> list[dict]:
    batches = (1, 32) if quick else (1, 8, 32, 64)
    contexts = (1024, 32768) if quick else (1024, 8192, 32768, 131072)
    rows = results.setdefault("decode", [])
    for name, batch, ctx in itertools.product(SHAPES, batches, contexts):
        if not fits(name, batch, ctx):
            rows.append({"shape": name, "batch": batch, "ctx": ctx,
                         "skipped": "does not fit in free memory"})
            continue
        rows.append(bench_decode_shape(name, batch, ctx, copy_gbps, quick))
        print_decode_table(rows[-1:])
        save()
    print_decode_table([r for r in rows if "skipped" not in r])
    return rows


if __name__ == "__main__":
    sys.exit(main())
