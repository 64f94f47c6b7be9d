"""Decode attention timed as the sweep times it and as the executor runs it.

The calibration sweep (`twinfer.calibration.sweep_compute.decode_group`) times the paged
split-KV decode kernel on small page pools of their own, one call after another. The
executor runs the same kernel once per layer inside a CUDA graph, over a KV cache that
fills most of the GPU's memory (one slab per layer), with the layer's GEMMs in between.
At 32K context the executor's steps were slower than the sweep predicts (docs/
VALIDATION.md). This script times one (batch, context, heads) point four ways on one GPU:

- ``sweep``: one launch between two events (the calibration before the sixth session);
- ``sweep_graph``: the same copies, 32 launches in one CUDA graph (the calibration's
  decode-attention timing since then, `twinfer.calibration.timing.measure_graphed`);
- ``pool``: a cache the executor's size and layout, every layer's pages 0..n in order
  (as the executor's allocator hands them out), 32 layers replayed from one graph;
- ``pool+weights``: the same with a read of one layer's weights (an 8B model's layer:
  218 MB under TP=1, half under TP=2) between layers, as in the model, minus that read
  timed alone;
- ``pool-random``: the pool with the pages in random order;

and ``--splits`` more KV-split counts in the pool layout. Prints a table and writes
JSON. GPU only::

    python scripts/decode_in_situ.py --out decode_in_situ.json
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from twinfer.calibration.timing import (
    TimingConfig,
    cache_bytes,
    measure,
    measure_graphed,
    rotations,
)
from twinfer.kernels.decode import paged_flash_decode

PAGE = 16
LAYERS = 32


def graph_of(fn) -> torch.cuda.CUDAGraph:
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
        fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    torch.cuda.synchronize()
    return graph


def replay_s(graph: torch.cuda.CUDAGraph, reps: int = 20) -> float:
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(2_000_000)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e-3)
    return statistics.median(times)


def point(batch: int, context: int, q_heads: int, kv_heads: int, layer_mb: int,
          pool_share: float, splits: list[int]) -> dict:
    """Time one (batch, context, heads) point every way (module doc)."""
    dev, dtype = torch.device("cuda"), torch.bfloat16
    pages = -(-(context + 32) // PAGE)
    q = torch.randn(batch, q_heads, 128, device=dev, dtype=dtype)
    lens = torch.full((batch,), context, device=dev, dtype=torch.int32)
    # sweep: small pools of their own, random page order, rotated past L2
    kv_bytes = 2 * batch * pages * PAGE * kv_heads * 128 * 2
    sets = []
    for _ in range(rotations(kv_bytes, cache_bytes(dev))):
        k = torch.randn(batch * pages, PAGE, kv_heads, 128, device=dev, dtype=dtype)
        table = torch.randperm(batch * pages, device=dev).view(batch, pages).int()
        sets.append((q, k, torch.randn_like(k), table, lens))
    sweep = measure(lambda i: paged_flash_decode(*sets[i % len(sets)]), dev, TimingConfig())
    sweep_graph = measure_graphed(lambda i: paged_flash_decode(*sets[i % len(sets)]), dev,
                                  TimingConfig())
    sets.clear()
    del k
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info()
    blocks = int(pool_share * free // (LAYERS * 2 * PAGE * kv_heads * 128 * 2))
    if blocks < batch * pages:
        return {}  # the executor's cache would not hold this batch on this GPU either
    store = torch.zeros(LAYERS, 2, blocks, PAGE, kv_heads, 128, device=dev, dtype=dtype)
    store[:, :, : batch * pages].normal_()
    inorder = torch.arange(batch * pages, device=dev).view(batch, pages).int()
    shuffled = torch.randperm(blocks, device=dev)[: batch * pages].view(batch, pages).int()
    weights = torch.empty(64, int(layer_mb * 1e6) // 128, device=dev, dtype=dtype)
    sink = torch.empty(weights.shape[1], device=dev, dtype=dtype)

    def layers(tab: torch.Tensor, num_splits: int | None = None, read: bool = False):
        def run() -> None:
            for layer in range(LAYERS):
                if read:  # stream one layer's weights through L2, as the GEMMs do
                    torch.sum(weights, dim=0, out=sink)
                paged_flash_decode(q, store[layer, 0], store[layer, 1], tab, lens,
                                   num_splits=num_splits)
        return run

    def reads() -> None:
        for _ in range(LAYERS):
            torch.sum(weights, dim=0, out=sink)

    row = {"batch": batch, "context": context, "q_heads": q_heads, "kv_heads": kv_heads,
           "pool_blocks": blocks, "pool_gib": store.numel() * 2 / 2**30,
           "sweep_us": sweep * 1e6, "sweep_graph_us": sweep_graph * 1e6}
    row["pool_us"] = replay_s(graph_of(layers(inorder))) / LAYERS * 1e6
    both = replay_s(graph_of(layers(inorder, read=True)))
    alone = replay_s(graph_of(reads))
    row["pool+weights_us"] = (both - alone) / LAYERS * 1e6
    row["weights_read_us"] = alone / LAYERS * 1e6
    row["pool-random_us"] = replay_s(graph_of(layers(shuffled))) / LAYERS * 1e6
    for s in splits:
        row[f"pool_splits{s}_us"] = replay_s(graph_of(layers(inorder, s))) / LAYERS * 1e6
    return row


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="decode_in_situ.json")
    p.add_argument("--pool-share", type=float, default=0.7, help="of free memory")
    p.add_argument("--splits", default="16,32,64")
    args = p.parse_args()
    splits = [int(x) for x in args.splits.split(",")]
    rows = []
    with torch.inference_mode():
        for q_heads, kv_heads, layer_mb in ((32, 8, 218), (16, 4, 109)):
            for context in (4096, 32768):
                for batch in (1, 16):
                    row = point(batch, context, q_heads, kv_heads, layer_mb,
                                args.pool_share, splits)
                    if not row:
                        continue
                    rows.append(row)
                    torch.cuda.empty_cache()
                    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v
                                      for k, v in row.items()}), flush=True)
    with open(args.out, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
