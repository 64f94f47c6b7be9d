"""Plot a scenario's layout-vs-baseline ratios over its sweep, on one or more GPU types.

    python -m twinfer.sim.sweep_plot fa_pool_paper --gpu h100-sxm --gpu h200-sxm \\
        --out docs/fa_pool_paper.png

Every node of the scenario's cluster is given the named GPU type (and its shipped
profile) in turn. matplotlib is imported only here (the ``test`` extra has it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from twinfer.sim.sweep import SweepPoint, sweep_compare, sweep_rows
from twinfer.spec.scenario import Scenario, load_scenario, scenario_from_dict


def on_gpu_type(scenario: Scenario, gpu: str) -> Scenario:
    """The scenario with every node's GPUs of type ``gpu``."""
    doc = scenario.to_dict()
    for node in doc["cluster"]["nodes"]:
        node["gpu"] = gpu
    doc["name"] = f"{scenario.name}@{gpu}"
    return scenario_from_dict(doc, base_dir=scenario.base_dir or None)


def plot_ratios(curves: dict[str, list[SweepPoint]], title: str, path: Path) -> Path:
    """One panel for TPOT speedups, one for TPS gains; served (solid) and decode-step
    (dashed) per GPU type; the line y = 1 is parity with the baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    panels = (("TPOT speedup (baseline / layout)", "tpot_s", "decode_tpot_s"),
              ("TPS gain (layout / baseline)", "tps", "decode_tps"))
    for ax, (label, served, decode) in zip(axes, panels, strict=True):
        for name, points in curves.items():
            xs = [p.value for p in points]
            line, = ax.plot(xs, [p.ratio(served) for p in points], marker="o",
                            label=f"{name} served")
            ax.plot(xs, [p.ratio(decode) for p in points], marker="s", linestyle="--",
                    color=line.get_color(), label=f"{name} decode step")
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("prompt tokens")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m twinfer.sim.sweep_plot",
                                description=__doc__.splitlines()[0])
    p.add_argument("scenario")
    p.add_argument("--gpu", action="append", help="GPU type(s) to run the cluster on")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    scenario = load_scenario(args.scenario)
    curves = {}
    for gpu in args.gpu or [scenario.cluster.nodes[0].gpu]:
        points = sweep_compare(on_gpu_type(scenario, gpu))
        curves[gpu] = points
        header, rows = sweep_rows(points)
        print(f"## {scenario.name} on {gpu}\n")
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(row) + " |")
        print()
    plot_ratios(curves, f"{scenario.name}: {scenario.layout.kind} vs baseline", args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
