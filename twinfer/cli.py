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
console = Console()
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
    seed: int = typer.Option(0, "--seed", help="random weights, prompts' sampling"),
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
) -> None:
    """Run a scenario's layout for real under MPI (starts mpiexec unless inside one)."""
    from twinfer.exec.launch import ExecArgs, run

    code = run(ExecArgs(scenario=scenario, np=np, out=out, device=device, checkpoint=checkpoint,
                        seed=seed, temperature=temperature, prompt=prompt,
                        max_new_tokens=max_new_tokens, stream=stream, tokenizer=tokenizer,
                        arrivals=arrivals, cuda_graphs=cuda_graphs))
    if code:
        raise typer.Exit(code)


def main(argv: Optional[list[str]] = None) -> None:  # noqa: UP045
    """Console-script entry point."""
    app(args=argv if argv is not None else sys.argv[1:], prog_name="twinfer")


if __name__ == "__main__":
    main()
