"""The twin's kv_sharded attention against ``kvshard_bench --case compare`` measurements.

    python -m twinfer.sim.kvshard_check kvshard_compare.json [--profile h200-sxm]

For every (batch, context) row of the benchmark's results JSON, the twin predicts one
decode-attention call per variant with the same cost terms `KvShardedStageCost` uses
for one layer: the split-KV decode of all heads over the rank's shard
(``local``), plus the exchange and the LSE combine (``allgather``, ``mpi``,
``fused``). Prints measured vs predicted and the relative error, as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from twinfer.sim.cost import CostModel
from twinfer.sim.kv_sharded import ExchangeCost
from twinfer.sim.profile import load_profile


def predict_us(cost: CostModel, row: dict, heads: dict, world: int,
               link: str = "nvlink") -> dict[str, float]:
    """Predicted microseconds per variant for one benchmark row."""
    q, kv, d = heads["q_heads"], heads["kv_heads"], heads["head_dim"]
    local = cost.decode_attention_s(row["batch"], row["shard_tokens"], q, kv, d)
    out = {"local": local * 1e6}
    for variant in ("allgather", "mpi", "fused"):
        t, combine = ExchangeCost(cost, link, world, variant).time_s(row["batch"] * q, d)
        out[variant] = (local + t + combine) * 1e6
    return out


def comparison_rows(doc: dict, cost: CostModel, link: str) -> list[list[str]]:
    rows = []
    for row in doc["results"]:
        predicted = predict_us(cost, row, doc["heads"], doc["world"], link)
        for variant, measured in row["median_us"].items():
            p = predicted[variant]
            rows.append([str(row["batch"]), str(row["context"]), variant, f"{measured:.1f}",
                         f"{p:.1f}", f"{(p - measured) / measured:+.1%}"])
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m twinfer.sim.kvshard_check",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, help="kvshard_bench --case compare JSON")
    ap.add_argument("--profile", default="h200-sxm")
    ap.add_argument("--link", default="nvlink", help="the link between the ranks")
    args = ap.parse_args(argv)
    doc = json.loads(args.results.read_text())
    dtype = {"torch.bfloat16": "bf16", "torch.float16": "fp16"}.get(doc.get("dtype"), "fp32")
    cost = CostModel(load_profile(args.profile), dtype)
    print(f"device: {doc.get('device')}; profile: {args.profile}; world {doc['world']}\n")
    print("| batch | context | variant | measured us | predicted us | error |")
    print("|---|---|---|---|---|---|")
    for r in comparison_rows(doc, cost, args.link):
        print("| " + " | ".join(r) + " |")
    print()
    print("\n".join(cost.provenance.lines()))


if __name__ == "__main__":
    main()
