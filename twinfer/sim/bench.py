"""Benchmark of the simulator itself: ``twinfer bench-sim`` or ``python -m twinfer.sim.bench``.

Two cases, each run in a fresh Python process so that its peak resident memory
(``getrusage`` max RSS: interpreter, numpy and all) is its own:

- ``tp8pp2``: 10,000 Poisson requests (prompt 512-4096, output 64-512 tokens, uniform)
  of Llama-3-70B on 2 nodes x 8 H100 with TP=8, PP=2 (16 GPUs);
- ``vidur``: Vidur's setting, for a like-for-like comparison: 10,000 Llama-2-7B requests,
  prompt 512, output 128, Poisson 10 req/s, TP=1 on one H100.

Reported: wall time of ``simulate`` (building the twin, drawing the requests, the
engine run and the metrics), simulated time, their ratio, requests per wall second,
peak memory. Figures are recorded in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from rich.console import Console
from rich.table import Table

CASES: dict[str, dict] = {
    "tp8pp2": {
        "name": "bench_llama3_70b_h100_tp8_pp2",
        "model": "llama-3-70b",
        "cluster": {"nodes": [{"name": "node0", "gpu": "h100-sxm", "count": 8},
                              {"name": "node1", "gpu": "h100-sxm", "count": 8}],
                    "inter_link": "infiniband",
                    # as scenarios/llama3_70b_h100_tp8_pp2.yaml: the H100 profile has no
                    # collectives; NVLink from the measured H200, InfiniBand datasheet
                    "links": {"nvlink": {"bw_gbps": 296, "latency_us": 27},
                              "infiniband": {"bw_gbps": 45, "latency_us": 10}}},
        "layout": {"kind": "uniform", "tp": 8, "pp": 2},
        "workload": {"requests": 10_000,
                     "prompt_tokens": {"dist": "uniform", "min": 512, "max": 4096},
                     "output_tokens": {"dist": "uniform", "min": 64, "max": 512},
                     "arrival": {"kind": "poisson", "rate_per_s": 8.0}, "seed": 0},
    },
    "vidur": {
        "name": "bench_vidur_llama2_7b_h100",
        "model": "llama-2-7b",
        "cluster": {"nodes": [{"name": "node0", "gpu": "h100-sxm", "count": 1}]},
        "layout": {"kind": "uniform", "tp": 1},
        "workload": {"requests": 10_000, "prompt_tokens": 512, "output_tokens": 128,
                     "arrival": {"kind": "poisson", "rate_per_s": 10.0}, "seed": 0},
    },
}


def run_case(name: str) -> dict:
    """Simulate one case in this process and measure it."""
    from twinfer.sim import simulate
    from twinfer.spec import scenario_from_dict

    scenario = scenario_from_dict(CASES[name])
    start, cpu_start = time.perf_counter(), time.process_time()
    result = simulate(scenario)
    wall_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {"case": name, "requests": result.requests, "steps": result.steps,
            "simulated_s": result.makespan_s, "wall_s": wall_s, "cpu_s": cpu_s,
            "simulated_per_wall": result.makespan_s / wall_s,
            "requests_per_wall_s": result.requests / wall_s, "peak_rss_bytes": peak_bytes,
            "ttft_mean_s": result.ttft_s.mean, "tpot_mean_s": result.tpot_s.mean,
            "tps": result.tps}


def run_bench(console: Console, only: str = "", json_out: str | None = None) -> list[dict]:
    """Run the cases, each in a subprocess, and print a table."""
    from twinfer.spec import SpecError

    names = [only] if only else list(CASES)
    for name in names:
        if name not in CASES:
            raise SpecError("--only", f"unknown case {name!r}", f"use one of {', '.join(CASES)}")
    rows = []
    for name in names:
        proc = subprocess.run([sys.executable, "-m", "twinfer.sim.bench", "--case", name],
                              capture_output=True, text=True)
        if proc.returncode:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise SpecError(f"bench-sim case {name}", f"failed: {last}",
                            f"run python -m twinfer.sim.bench --case {name} to see it all")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    table = Table(title="twinfer bench-sim (one process per case, single-threaded)")
    for col in ("case", "requests", "engine steps", "simulated s", "wall s", "CPU s",
                "sim/wall", "req per wall s", "peak RSS MiB"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["case"], f"{r['requests']:,}", f"{r['steps']:,}",
                      f"{r['simulated_s']:.1f}", f"{r['wall_s']:.2f}", f"{r['cpu_s']:.2f}",
                      f"{r['simulated_per_wall']:.0f}", f"{r['requests_per_wall_s']:,.0f}",
                      f"{r['peak_rss_bytes'] / 2**20:.0f}")
    console.print(table)
    if json_out:
        from pathlib import Path

        from twinfer.spec.io import write_json_atomic

        write_json_atomic(Path(json_out), rows)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), help="run one case in this process")
    parser.add_argument("--only", default="", help="run one case (in a subprocess)")
    parser.add_argument("--json", default=None, help="write the figures as JSON")
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(args.case)))
        return
    run_bench(Console(), only=args.only, json_out=args.json)


if __name__ == "__main__":
    main()
