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


def main(argv: Optional[list[str]] = None) -> None:  # noqa: UP045
    """Console-script entry point."""
    app(args=argv if argv is not None else sys.argv[1:], prog_name="twinfer")


if __name__ == "__main__":
    main()
