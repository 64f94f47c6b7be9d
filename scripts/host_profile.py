"""Where the host's time goes in eager executor steps (GPU).

An eager step (every prefill; decode without CUDA graphs) cannot finish before Python
has launched its last kernel, and the overhead runs show one-GPU prefill of a
512-token prompt paced by the host (docs/VALIDATION.md). This script builds the
executor's engine for a model with a few layers on one GPU, serves a 512-token prompt
and a batch of decode steps without CUDA graphs, and prints the host time per layer of
each phase and the Python functions that take it (``cProfile``, sorted by own time)::

    python scripts/host_profile.py --layers 4 --out host_profile.txt
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics

import torch

from twinfer.exec.engine import Engine, EngineOptions, ServeOptions
from twinfer.exec.scheduler import Sequence
from twinfer.spec import SchedulerSpec, model_preset


def serve(engine: Engine, prompt: int, batch: int, new: int) -> list[dict]:
    seqs = [Sequence(i, 0.0, [1 + i] * prompt, new) for i in range(batch)]
    return engine.serve(seqs, ServeOptions(wall_clock_arrivals=False)).steps


def per_layer_ms(steps: list[dict], phase: str, layers: int) -> float:
    return statistics.median(s["host"]["launch_s"] for s in steps
                             if s["phase"] == phase) * 1e3 / layers


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="llama-3-8b")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--out", default="host_profile.txt")
    args = p.parse_args()
    spec = model_preset(args.model, layers=args.layers)
    engine = Engine.local(spec, SchedulerSpec(gpu_memory_utilization=0.5),
                          EngineOptions(cuda_graphs=False), torch.device("cuda"))
    serve(engine, 512, 1, 4)  # compile every kernel
    serve(engine, 256, 4, 4)
    lines = []
    for name, (prompt, batch, new) in {"prefill 512 x1 + decode b1": (512, 1, 16),
                                       "prefill 256 x4 + decode b4": (256, 4, 16)}.items():
        steps = serve(engine, prompt, batch, new)
        lines.append(f"{name}: host per layer, prefill "
                     f"{per_layer_ms(steps, 'prefill', args.layers):.3f} ms, eager decode "
                     f"{per_layer_ms(steps, 'decode', args.layers):.3f} ms")
        prof = cProfile.Profile()
        prof.enable()
        serve(engine, prompt, batch, new)
        prof.disable()
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(40)
        lines.append(text.getvalue())
    report = "\n".join(lines)
    print(report)
    with open(args.out, "w") as f:
        f.write(report)


if __name__ == "__main__":
    main()
