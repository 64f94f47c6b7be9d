"""Readable tables of a simulation result and of the available profiles (rich)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from twinfer.sim.profile import load_profile, shipped_profiles
from twinfer.sim.results import SimResult, Stat

GIB = float(1 << 30)


def _ms(stat: Stat) -> list[str]:
    return [f"{v * 1e3:.2f}" if v == v else "-" for v in (stat.mean, stat.p50, stat.p99)]


def result_tables(result: SimResult) -> list[Table]:
    """Latency/throughput, per-GPU utilization and memory."""
    head = Table(title=f"{result.scenario}: {result.model}, {result.layout}, "
                       f"{result.num_gpus} GPUs ({result.engine})")
    for col in ("metric", "mean", "p50", "p99"):
        head.add_column(col, justify="right" if col != "metric" else "left")
    head.add_row("TTFT (ms)", *_ms(result.ttft_s))
    head.add_row("TPOT (ms)", *_ms(result.tpot_s))
    head.add_row("E2E latency (ms)", *_ms(result.e2e_s))
    head.caption = (f"{result.requests} requests, {result.output_tokens} output tokens in "
                    f"{result.makespan_s:.2f} s simulated: {result.tps:,.0f} tokens/s, "
                    f"{result.requests_per_s:.2f} req/s; communication "
                    f"{result.comm_share:.0%} of GPU time; wall {result.wall_s:.2f} s")
    gpus = Table(title="GPUs")
    for col in ("gpu", "type", "pipe/stage", "busy", "comm", "weights GiB", "workspace GiB",
                "KV peak/cap GiB", "usable GiB"):
        gpus.add_column(col, justify="right")
    for g in result.gpus:
        gpus.add_row(str(g.gpu), g.gpu_type, f"{g.pipeline}/{g.stage}",
                     f"{g.busy_fraction:.0%}", f"{g.comm_fraction:.0%}",
                     f"{g.weights_bytes / GIB:.2f}", f"{g.workspace_bytes / GIB:.2f}",
                     f"{g.kv_peak_bytes / GIB:.2f}/{g.kv_capacity_bytes / GIB:.2f}",
                     f"{g.usable_bytes / GIB:.1f}")
    return [head, gpus]


def print_result(console: Console, result: SimResult, verbose: bool = False) -> None:
    for table in result_tables(result):
        console.print(table)
    sources = ", ".join(f"{t}: {p['source']}" if p["name"] == t
                        else f"{t}: {p['name']} ({p['source']})"
                        for t, p in result.profiles.items())
    console.print(f"profiles: {sources}", highlight=False)
    for line in result.warnings:
        console.print(f"[yellow]warning:[/] {line}", highlight=False)
    if verbose:
        console.print("prediction rests on:", highlight=False)
        for line in result.provenance:
            console.print(f"  {line}", highlight=False)


def profiles_table() -> Table:
    table = Table(title="profiles (twinfer/calibration/profiles)")
    for col in ("name", "device", "source", "date", "memory GiB", "collectives"):
        table.add_column(col)
    for name in shipped_profiles():
        p = load_profile(name)
        links = ", ".join(sorted(p.collectives)) or "-"
        table.add_row(name, p.device.name, p.source, p.device.date or "-",
                      f"{p.device.memory_bytes / GIB:.1f}", links)
    return table
