"""``python -m twinfer.exec SCENARIO [options]``: what ``twinfer exec`` runs.

Without typer or rich (the GPU image may lack them): inside an MPI job this is one
rank; outside, it starts mpiexec over ``python -m twinfer.exec`` (see
`twinfer.exec.launch`).
"""

from __future__ import annotations

import argparse
import sys

from twinfer.exec.launch import ExecArgs, run
from twinfer.spec import SpecError


def parse_args(argv: list[str] | None = None) -> ExecArgs:
    p = argparse.ArgumentParser(prog="python -m twinfer.exec",
                                description="Run a scenario's layout for real under MPI.")
    p.add_argument("scenario", help="YAML path or shipped scenario name")
    p.add_argument("--np", type=int, default=None, help="ranks (default: what the layout needs)")
    p.add_argument("--out", default="results.json", help="results JSON (rank 0 writes it)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--checkpoint", default=None, help="HF safetensors directory")
    p.add_argument("--seed", type=int, default=0, help="random weights and sampling")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--prompt", default=None, help="serve this one prompt instead")
    p.add_argument("--max-new-tokens", type=int, default=32, help="for --prompt")
    p.add_argument("--stream", action="store_true", help="print tokens as they come")
    p.add_argument("--tokenizer", default=None, help="HF tokenizer dir (default: bytes)")
    p.add_argument("--arrivals", choices=["scenario", "batch"], default="scenario")
    p.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false")
    p.add_argument("--no-warmup", dest="warmup", action="store_false")
    p.add_argument("--dump-logits", default=None, help="npz of the drivers' logits (tests)")
    ns = p.parse_args(argv)
    return ExecArgs(**vars(ns))


def main(argv: list[str] | None = None) -> int:
    try:
        return run(parse_args(argv))
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
