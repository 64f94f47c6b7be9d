"""The one command-line entry point: ``twinfer <verb>``.

Every verb is a thin call into a library function that tests call directly. Bad
input (a ``SpecError``) prints one line naming the field and the fix and exits
with code 2, never a traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from twinfer.spec import SpecError, model_preset, preset_names, shipped_scenarios

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="twinfer: calibrate, simulate and execute distributed LLM inference.")
# Piped output (logs, CI) gets a width that fits the GPU tables; a terminal keeps its own.
console = Console(width=None if sys.stdout.isatty() else 140)
err_console = Console(stderr=True)


def user_errors(fn: Callable) -> Callable:
    """Turn bad input into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SpecError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


@app.command()
@user_errors
def scenarios() -> None:
    """List the shipped scenarios."""
    from twinfer.spec import load_scenario

    table = Table(title="shipped scenarios")
    for col in ("name", "model", "layout", "GPUs", "description"):
        table.add_column(col)
    for name, path in shipped_scenarios().items():
        s = load_scenario(path)
        table.add_row(name, s.model.name, s.layout.kind, str(s.cluster.num_gpus),
                      " ".join(s.description.split())[:70])
    console.print(table)


@app.command()
@user_errors
def models() -> None:
    """List the model presets with their derived sizes."""
    table = Table(title="model presets")
    for col in ("preset", "layers", "hidden", "heads/kv", "ffn", "vocab", "params",
                "KV KiB/token"):
        table.add_column(col, justify="right")
    for name in preset_names():
        m = model_preset(name)
        table.add_row(name, str(m.layers), str(m.hidden), f"{m.heads}/{m.kv_heads}",
                      str(m.ffn_hidden), str(m.vocab), f"{m.params / 1e9:.2f}B",
                      f"{m.kv_bytes_per_token / 1024:.0f}")
    console.print(table)


@app.command()
@user_errors
def calibrate(
    out: str = typer.Option("", "--out", help="profile JSON to write (default: "
                            "twinfer/calibration/profiles/<name>.json)"),
    quick: bool = typer.Option(False, "--quick", help="fewer points (a CPU run: < 60 s)"),
    ops: str = typer.Option("gemm,decode_attention,prefill_attention,elementwise,collectives",
                            "--ops", help="comma-separated sweeps to run; a single "
                            "collective (all_reduce, ...) measures only that one"),
    device: str = typer.Option("auto", "--device", help="cuda, cpu or auto"),
    name: str = typer.Option("", "--name", help="profile name (default from the device)"),
    time_budget_s: float = typer.Option(0.0, "--time-budget-s",
                                        help="stop the compute sweeps after this long (0: none)"),
    from_exec: Optional[list[str]] = typer.Option(  # noqa: UP045
        None, "--from-exec", help="executor results JSON, or a folder of them (repeat the "
        "flag for several): fit the profile's overheads from their step timelines instead "
        "of sweeping (needs --profile or --out)"),
    profile: str = typer.Option("", "--profile", help="with --from-exec: the profile to fit"),
) -> None:
    """Measure the visible device and write a calibration profile (resumes if interrupted)."""
    from pathlib import Path

    if from_exec:
        from twinfer.calibration.overheads import fit_overheads_cli

        console.print(fit_overheads_cli([Path(p) for p in from_exec], profile or out, out))
        return
    from twinfer.calibration.calibrate import CalibrateOptions, calibrate_and_summarize

    opts = CalibrateOptions(
        out=Path(out) if out else None, device=device, quick=quick,
        ops=tuple(o.strip() for o in ops.split(",") if o.strip()), name=name,
        time_budget_s=time_budget_s)
    console.print(calibrate_and_summarize(opts))


def _profile_args(values: list[str] | None) -> object:
    """``--profile P`` (one profile) or repeated ``--profile TYPE=P`` (one per GPU type)."""
    if not values:
        return None
    if len(values) == 1 and "=" not in values[0]:
        return values[0]
    pairs = [v.split("=", 1) for v in values]
    if any(len(p) != 2 for p in pairs):
        raise SpecError("--profile", "mixes a bare profile with TYPE=PATH entries",
                        "give one profile, or TYPE=PATH for each GPU type")
    return dict(pairs)


@app.command()
@user_errors
def simulate(
    scenario: Optional[str] = typer.Argument(  # noqa: UP045
        None, help="scenario YAML or shipped name (default: the shipped default)"),
    profile: Optional[list[str]] = typer.Option(  # noqa: UP045
        None, "--profile", help="profile name or JSON path; TYPE=PATH per GPU type"),
    json_out: Optional[str] = typer.Option(None, "--json", help="write the result JSON"),  # noqa: UP045
    trace: Optional[str] = typer.Option(  # noqa: UP045
        None, "--trace", help="write a Chrome/Perfetto trace of the simulated timeline"),
    fast: bool = typer.Option(False, "--fast", help="closed-form fast path (no queueing)"),
    verbose: bool = typer.Option(False, "--verbose", "-v",
                                 help="list the samples and fallbacks the prediction rests on"),
) -> None:
    """Predict TTFT, TPOT, TPS and memory of a scenario with the twin."""
    from twinfer.sim import simulate as run_twin
    from twinfer.sim.fast import estimate
    from twinfer.sim.report import print_result
    from twinfer.spec import DEFAULT_SCENARIO, load_scenario

    source = scenario or DEFAULT_SCENARIO
    profiles = _profile_args(profile)
    if fast:
        if trace:
            raise SpecError("--trace", "the fast path has no timeline", "drop --fast")
        result = estimate(source, profiles)
    else:
        result = run_twin(source, profiles, trace=trace)
    print_result(console, result, verbose)
    loaded = load_scenario(source)
    if not fast and (loaded.baseline is not None or loaded.sweep is not None):
        from twinfer.sim.sweep import print_sweep

        print_sweep(console, loaded, profiles)  # the layout against its baseline
    if json_out:
        console.print(f"wrote {result.to_json(json_out)}", highlight=False)
    if trace:
        console.print(f"wrote {trace} (open in https://ui.perfetto.dev)", highlight=False)


@app.command()
@user_errors
def profiles() -> None:
    """List the shipped GPU profiles and where their numbers come from."""
    from twinfer.sim.report import profiles_table

    console.print(profiles_table())


@app.command("bench-sim")
@user_errors
def bench_sim(
    only: str = typer.Option("", "--only", help="run one case: tp8pp2 or vidur"),
    json_out: Optional[str] = typer.Option(None, "--json", help="write the figures as JSON"),  # noqa: UP045
) -> None:
    """Benchmark the simulator itself (wall time, peak memory, simulated/wall)."""
    from twinfer.sim.bench import run_bench

    run_bench(console, only=only, json_out=json_out)


@app.command("exec")
@user_errors
def exec_(
    scenario: str = typer.Argument(..., help="scenario YAML or shipped name"),
    np: Optional[int] = typer.Option(  # noqa: UP045
        None, "--np", help="MPI ranks (default: what the layout needs; GPU id g = rank g)"),
    out: str = typer.Option("results.json", "--out", help="results JSON, written by rank 0"),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto"),
    checkpoint: Optional[str] = typer.Option(  # noqa: UP045
        None, "--checkpoint", help="HF safetensors directory (default: seeded random weights)"),
    seed: int = typer.Option(0, "--seed", help="seed of the random weights and of sampling"),
    temperature: float = typer.Option(0.0, "--temperature", help="0: greedy"),
    prompt: Optional[str] = typer.Option(  # noqa: UP045
        None, "--prompt", help="serve this one prompt instead of the workload"),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", help="tokens for --prompt"),
    stream: bool = typer.Option(False, "--stream", help="print tokens as they are generated"),
    tokenizer: Optional[str] = typer.Option(  # noqa: UP045
        None, "--tokenizer", help="HF tokenizer directory (default: byte-level)"),
    arrivals: str = typer.Option("scenario", "--arrivals",
                                 help="scenario: honor arrival times; batch: all at t=0"),
    cuda_graphs: bool = typer.Option(True, "--cuda-graphs/--no-cuda-graphs",
                                     help="replay decode steps from CUDA graphs on GPU"),
    compare_after: bool = typer.Option(False, "--compare", help="then simulate the same "
                                       "scenario and print predicted vs measured"),
) -> None:
    """Run a scenario's layout for real under MPI (starts mpiexec unless inside one)."""
    from twinfer.exec.launch import ExecArgs, run

    code = run(ExecArgs(scenario=scenario, np=np, out=out, device=device, checkpoint=checkpoint,
                        seed=seed, temperature=temperature, prompt=prompt,
                        max_new_tokens=max_new_tokens, stream=stream, tokenizer=tokenizer,
                        arrivals=arrivals, cuda_graphs=cuda_graphs))
    if code:
        raise typer.Exit(code)
    if compare_after and _is_rank_zero():
        from twinfer.compare import compare_file, comparison_table

        console.print(comparison_table(compare_file(out)))


def _is_rank_zero() -> bool:
    """Outside an MPI job, or rank 0 inside one (the rank that wrote the results)."""
    import os

    for name in ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"):
        if name in os.environ:
            return os.environ[name] == "0"
    return True


@app.command()
@user_errors
def compare(
    results: list[str] = typer.Argument(..., help="executor results JSON(s); with --table "
                                        "also directories searched for them"),
    profile: Optional[str] = typer.Option(  # noqa: UP045
        None, "--profile", help="profile name or JSON path (default: the scenario's)"),
    json_out: Optional[str] = typer.Option(None, "--json", help="write the comparison JSON"),  # noqa: UP045
    plot: Optional[str] = typer.Option(None, "--plot", help="write a bar chart PNG"),  # noqa: UP045
    table: bool = typer.Option(False, "--table", help="print the Markdown validation matrix "
                               "(median and worst error per metric) of all the results"),
    steps: bool = typer.Option(False, "--steps", help="also every step composition: "
                               "measured, on the GPU, predicted, kernels alone"),
) -> None:
    """Simulated versus measured: TTFT, TPOT, TPS and per-phase time of executor runs."""
    from pathlib import Path

    from twinfer import compare as cmp
    from twinfer.spec.io import write_json_atomic

    if table:
        print(cmp.validation_table(results, profile))
        return
    from twinfer.sim.profile import load_profile

    found = []
    prof = load_profile(profile) if profile else None
    for path in cmp.results_paths(results):
        doc = cmp.load_results(path)
        c = cmp.compare(doc, prof, str(path))
        found.append(c)
        console.print(cmp.comparison_table(c))
        for note in c.notes:
            console.print(f"[yellow]note:[/yellow] {note}", highlight=False)
        if steps:
            groups = cmp.step_groups(doc, prof)
            console.print(cmp.steps_table(groups, f"{c.scenario}: steps by composition"))
    if json_out:
        docs = [c.to_dict() for c in found]
        write_json_atomic(Path(json_out), docs[0] if len(docs) == 1 else docs)
        console.print(f"wrote {json_out}", highlight=False)
    if plot:
        console.print(f"wrote {cmp.plot_comparison(found[0], plot)}", highlight=False)


@app.command()
@user_errors
def search(
    scenario: str = typer.Argument(..., help="scenario YAML or shipped name"),
    gpus: Optional[str] = typer.Option(  # noqa: UP045
        None, "--gpus", help="TYPE:COUNT[,TYPE:COUNT] (default: the scenario's cluster)"),
    objective: str = typer.Option("tpot", "--objective", help="tpot, tps or cost"),
    slo: Optional[str] = typer.Option(  # noqa: UP045
        None, "--slo", help="ttft=SECONDS,tpot=SECONDS (or 40ms)"),
    out: Optional[str] = typer.Option(  # noqa: UP045
        None, "--out", help="write the chosen layout as a scenario YAML"),
    workers: int = typer.Option(0, "--workers", help="local processes (0: one per core)"),
) -> None:
    """Search layouts: fast path over every candidate, SimPy on the best, Pareto front."""
    from twinfer.search_mpi import run_search
    from twinfer.sim.search import SearchOptions
    from twinfer.sim.search_report import parse_slo

    if objective not in ("tpot", "tps", "cost"):
        raise SpecError("--objective", f"unknown objective {objective!r}",
                        "use tpot, tps or cost")
    limits = parse_slo(slo)
    opts = SearchOptions(objective=objective, slo_ttft_s=limits.get("ttft"),
                         slo_tpot_s=limits.get("tpot"), workers=workers)
    run_search(scenario, opts, gpus, out)


@app.command()
def ui(
    port: int = typer.Option(8501, "--port", help="port to serve the dashboard on"),
    host: str = typer.Option("127.0.0.1", "--host",
                             help="address to bind (default: this machine only)"),
) -> None:
    """Open the what-if dashboard (Streamlit) on http://HOST:PORT."""
    from twinfer.ui.serve import serve

    code = serve(port, host)
    if code:
        raise typer.Exit(code)


def main(argv: Optional[list[str]] = None) -> None:  # noqa: UP045
    """Console-script entry point."""
    app(args=argv if argv is not None else sys.argv[1:], prog_name="twinfer")


if __name__ == "__main__":
    main()
