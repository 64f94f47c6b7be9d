"""The results JSON of an executor run (schema: docs/RESULTS.md), written by rank 0.

Rank 0 gathers every rank's `ServeReport` and build info and merges them: requests and
steps come from the pipelines' drivers, each step gets every rank's compute /
communication / wait split. The file is written atomically (a temporary file in the
same directory, then ``os.replace``), so a reader never sees half a file.
"""

from __future__ import annotations

import platform
from datetime import UTC, datetime

import numpy as np

SCHEMA = "twinfer.exec.results/1"


def stats(values: list[float]) -> dict[str, float | None]:
    """mean, p50, p99 (linear interpolation) of ``values``; None when empty."""
    if not values:
        return {"mean": None, "p50": None, "p99": None}
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "p50": float(np.percentile(a, 50)),
            "p99": float(np.percentile(a, 99))}


def request_metrics(req: dict) -> dict:
    """TTFT, TPOT and E2E of one finished request (seconds)."""
    times, arrival = req["token_s"], req["arrival_s"]
    ttft = times[0] - arrival
    e2e = times[-1] - arrival
    n = len(times)
    tpot = (times[-1] - times[0]) / (n - 1) if n > 1 else None
    out = {k: v for k, v in req.items() if k != "token_s"}
    return {**out, "ttft_s": ttft, "tpot_s": tpot, "e2e_s": e2e}


def merge_steps(reports: list, ranks: list[dict]) -> list[dict]:
    """The drivers' step records, each with a ``ranks`` map of per-rank timings."""
    pipeline_of = {r["rank"]: r["pipeline"] for r in ranks}
    by_key: dict[tuple[int, int], dict[str, dict]] = {}
    for rep in reports:
        if rep is None:
            continue
        for rec in rep.timings:
            key = (pipeline_of[rep.rank], rec["step"])
            by_key.setdefault(key, {})[str(rep.rank)] = {k: v for k, v in rec.items()
                                                         if k != "step"}
    steps = []
    for rep in reports:
        for s in rep.steps if rep is not None else []:
            steps.append({**s, "ranks": by_key.get((s["pipeline"], s["step"]), {})})
    steps.sort(key=lambda s: (s["start_s"], s["pipeline"], s["step"]))
    return steps


def rank_totals(reports: list, ranks: list[dict]) -> list[dict]:
    """Per-rank sums of compute, communication and wait over the run."""
    out = []
    for info, rep in zip(ranks, reports, strict=True):
        recs = rep.timings if rep is not None else []

        def total(key: str, recs: list[dict] = recs) -> float | None:
            vals = [r[key] for r in recs if r[key] is not None]
            return float(sum(vals)) if vals else None

        out.append({**info, "steps": len(recs), "span_s": total("span_s"),
                    "compute_s": total("compute_s"), "comm_s": total("comm_s"),
                    "wait_s": total("wait_s")})
    return out


def kv_summary(steps: list[dict], page_size: int, num_blocks: int, reports: list,
               ranks: list[dict]) -> dict:
    pages = np.array([s["kv_pages_used"] for s in steps], dtype=np.float64)
    tokens = np.array([s["kv_tokens"] for s in steps], dtype=np.float64)
    held = pages.sum() * page_size
    peak = int(pages.argmax()) if len(pages) else 0
    fractions = [r["kv_fraction_of_left"] for r in ranks if r.get("kv_fraction_of_left")]
    return {
        "page_size": page_size,
        "num_blocks": num_blocks,
        "bytes_per_rank": {str(r["rank"]): r.get("kv_bytes") for r in ranks},
        "peak_pages_used": max((rep.kv_peak_pages for rep in reports if rep), default=0),
        "wasted_fraction_mean": float(1 - tokens.sum() / held) if held else None,
        "wasted_fraction_at_peak": (float(1 - tokens[peak] / (pages[peak] * page_size))
                                    if len(pages) and pages[peak] else None),
        "kv_fraction_of_left_min": min(fractions) if fractions else None,
    }


def build_results(header: dict, reports: list, ranks: list[dict], kv: dict) -> dict:
    """The results document. ``header`` holds scenario, layout, placement, device,
    versions and options; ``ranks`` each rank's build info; ``kv`` page size and count."""
    requests = [request_metrics(r) for rep in reports if rep is not None for r in rep.requests]
    requests.sort(key=lambda r: r["rid"])
    steps = merge_steps(reports, ranks)
    out_tokens = sum(r["output_tokens"] for r in requests)
    start = min((r["arrival_s"] for r in requests), default=0.0)
    end = max((r["arrival_s"] + r["e2e_s"] for r in requests), default=0.0)
    makespan = end - start
    summary = {
        "requests": len(requests), "output_tokens": out_tokens, "makespan_s": makespan,
        "tps": out_tokens / makespan if makespan > 0 else None,
        "ttft_s": stats([r["ttft_s"] for r in requests]),
        "tpot_s": stats([r["tpot_s"] for r in requests if r["tpot_s"] is not None]),
        "e2e_s": stats([r["e2e_s"] for r in requests]),
        "prefill_steps": sum(s["phase"] == "prefill" for s in steps),
        "decode_steps": sum(s["phase"] == "decode" for s in steps),
        "cuda_graphs": all(rep.cuda_graphs for rep in reports if rep is not None),
    }
    return {
        "schema": SCHEMA,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        **header,
        "summary": summary,
        "requests": requests,
        "steps": steps,
        "kv_cache": kv_summary(steps, kv["page_size"], kv["num_blocks"], reports, ranks),
        "ranks": rank_totals(reports, ranks),
    }


def summary_lines(doc: dict) -> list[str]:
    """A few human lines about a results document."""
    s = doc["summary"]

    def ms(d: dict) -> str:
        if d["mean"] is None:
            return "-"
        return f"mean {d['mean'] * 1e3:.2f} ms, p50 {d['p50'] * 1e3:.2f}, p99 {d['p99'] * 1e3:.2f}"

    tps = f"{s['tps']:.1f}" if s["tps"] else "-"
    return [
        f"{doc['scenario'].get('name', '?')}: {s['requests']} requests, "
        f"{s['output_tokens']} output tokens in {s['makespan_s']:.3f} s ({tps} tok/s)",
        f"  TTFT {ms(s['ttft_s'])}",
        f"  TPOT {ms(s['tpot_s'])}",
        f"  steps: {s['prefill_steps']} prefill, {s['decode_steps']} decode; "
        f"CUDA graphs: {s['cuda_graphs']}",
    ]
