"""What ``twinfer search`` prints and writes: the Pareto front, the chosen layout as a
scenario YAML, and the mpirun command that executes it."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from twinfer.sim.search import (
    Candidate,
    SearchResult,
    chosen_scenario,
    mpirun_command,
)
from twinfer.spec.errors import SpecError


def parse_slo(text: str | None) -> dict[str, float]:
    """``ttft=0.5,tpot=40ms`` -> {"ttft": 0.5, "tpot": 0.04} (seconds; ``ms`` allowed)."""
    out: dict[str, float] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, _, value = part.strip().partition("=")
        scale = 1e-3 if value.endswith("ms") else 1.0
        try:
            number = float(value.removesuffix("ms").removesuffix("s")) * scale
        except ValueError:
            number = -1.0
        if key not in ("ttft", "tpot") or number <= 0:
            raise SpecError("--slo", f"cannot read {part.strip()!r}",
                            "write ttft=SECONDS,tpot=SECONDS (or 40ms)")
        out[key] = number
    return out


def layout_summary(layout: dict) -> str:
    """One line per layout: ``tp4 pp2 x2``, ``[tp4:80L] [tp4:46L > tp2:34L]``, ..."""
    kind = layout["kind"]
    if kind == "uniform":
        return f"tp{layout['tp']} pp{layout['pp']} x{layout['replicas']}"
    if kind == "hetero":
        return " ".join("[" + " > ".join(f"tp{len(s['gpus'])}:{s['layers']}L"
                                         for s in p["stages"]) + "]"
                        for p in layout["pipelines"])
    if kind == "fa_pool":
        base = layout["base"]
        return (f"base tp{base.get('tp', 1)} pp{base.get('pp', 1)} + pool "
                f"{len(layout['pool_gpus'])} T={layout['threshold_tokens']}")
    return f"tp{layout['tp']} x{layout['replicas']} {layout['comm']}"


def _types(result: SearchResult, c: Candidate) -> str:
    cluster = result.scenario.cluster
    doc = result.scenario.with_layout(c.layout).placement()
    counts: dict[str, int] = {}
    for g in doc.gpus:
        t = cluster.gpu_type(g)
        counts[t] = counts.get(t, 0) + 1
    return " ".join(f"{n}x{t}" for t, n in counts.items())


def pareto_table(result: SearchResult, limit: int = 25) -> Table:
    refined = {c.index: c for c in result.refined}
    table = Table(title=f"Pareto front (TPOT vs TPS vs GPUs): {len(result.pareto)} of "
                        f"{len(result.evaluated)} layouts that fit")
    for col in ("GPUs", "kind", "layout", "TPOT ms", "TTFT ms", "TPS", "TPS/GPU", "engine"):
        if col == "layout":  # long HexGen layouts fold rather than vanish in 80 columns
            table.add_column(col, min_width=18, overflow="fold")
        else:
            table.add_column(col, justify="left" if col == "kind" else "right")
    rows = sorted(result.pareto, key=lambda c: (c.num_gpus, c.tpot_s))[:limit]
    for fast in rows:
        c = refined.get(fast.index, fast)
        mark = " *" if c.index == result.chosen.index else ""
        table.add_row(f"{c.num_gpus}", c.kind, escape(layout_summary(c.layout)) + mark,
                      f"{c.tpot_s * 1e3:.2f}", f"{c.ttft_s * 1e3:.1f}", f"{c.tps:.0f}",
                      f"{c.tps_per_gpu:.0f}", c.engine)
    return table


def print_search(console: Console, result: SearchResult) -> None:
    opts = result.options
    console.print(f"{result.enumerated} candidates enumerated, {len(result.evaluated)} fit and "
                  f"ranked by the fast path in {result.fast_wall_s:.1f} s, top "
                  f"{len(result.refined)} refined with the SimPy engine; "
                  f"{result.wall_s:.1f} s in all", highlight=False)
    console.print(pareto_table(result))
    c = result.chosen
    slo = "" if result.slo_met else " (no layout meets the SLO: best by the objective shown)"
    summary = escape(layout_summary(c.layout))
    console.print(f"chosen by {opts.objective}{slo}: {c.kind} {summary} on "
                  f"{c.num_gpus} GPUs ({_types(result, c)}): TPOT {c.tpot_s * 1e3:.2f} ms, "
                  f"TTFT {c.ttft_s * 1e3:.1f} ms, {c.tps:.0f} tokens/s ({c.engine})",
                  highlight=False)


def write_chosen(result: SearchResult, path: str | Path) -> str:
    """Write the chosen layout as a scenario YAML; returns the mpirun command for it."""
    scenario = chosen_scenario(result)
    path = Path(path)
    name = path.stem
    doc = scenario.model_copy(update={"name": name,
                                      "description": f"chosen by twinfer search "
                                      f"({result.options.objective}) from "
                                      f"{result.scenario.name}"})
    path.write_text(doc.to_yaml())
    return mpirun_command(scenario, str(path))
