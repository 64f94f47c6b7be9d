"""Where the host's time goes in eager executor steps (GPU).

An eager step (every prefill; decode without CUDA graphs) cannot finish before Python
has launched its last kernel, and the overhead runs show one-GPU prefill of a
512-token prompt paced by the host (docs/VALIDATION.md). This script builds the
executor's engine on one GPU with two layer counts, serves prompts and eager decode
steps (no CUDA graphs) with each Triton launch path (`twinfer.kernels.backend`), and
prints per phase the host's enqueue time and the GPU's span, per layer (the difference
between the two layer counts) and fixed, then the Python functions that take the host
time of a 512-token prefill (``cProfile``, by own time)::

    python scripts/host_profile.py --out host_profile.txt
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import pstats
import statistics

import torch

from twinfer.exec.engine import Engine, EngineOptions, ServeOptions
from twinfer.exec.scheduler import Sequence
from twinfer.kernels import backend
from twinfer.spec import SchedulerSpec, model_preset

CASES = {"prefill 512 x1": (512, 1), "prefill 256 x4": (256, 4),
         "decode b1": (512, 1), "decode b4": (256, 4)}


def serve(engine: Engine, prompt: int, batch: int, new: int):
    seqs = [Sequence(i, 0.0, [1 + i] * prompt, new) for i in range(batch)]
    return engine.serve(seqs, ServeOptions(wall_clock_arrivals=False))


def medians(engine: Engine) -> dict[str, tuple[float, float]]:
    """{case: (host enqueue s, GPU span s)}, medians over repeated serves."""
    out = {}
    for case, (prompt, batch) in CASES.items():
        phase = case.split()[0]
        host, span = [], []
        for _ in range(3):
            report = serve(engine, prompt, batch, 12)
            spans = {t["step"]: t["span_s"] for t in report.timings}
            for s in report.steps:
                if s["phase"] == phase:
                    host.append(s["host"]["launch_s"])
                    span.append(spans[s["step"]])
        out[case] = (statistics.median(host), statistics.median(span))
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="llama-3-8b")
    p.add_argument("--layers", default="8,32")
    p.add_argument("--launch", default="direct,runner", help="launch paths to compare")
    p.add_argument("--out", default="host_profile.txt")
    args = p.parse_args()
    counts = [int(x) for x in args.layers.split(",")]
    rows, lines, profiled = {}, [], None
    for layers in counts:
        engine = Engine.local(model_preset(args.model, layers=layers),
                              SchedulerSpec(gpu_memory_utilization=0.5),
                              EngineOptions(cuda_graphs=False), torch.device("cuda"))
        for mode in args.launch.split(","):
            backend.DIRECT_LAUNCH = mode == "direct"
            backend._compiled.clear()
            serve(engine, 512, 1, 4)  # compile, then fill the launch cache
            serve(engine, 256, 4, 4)
            rows[(layers, mode)] = medians(engine)
        if layers == counts[-1]:
            backend.DIRECT_LAUNCH = True
            backend._compiled.clear()
            serve(engine, 512, 1, 4)
            prof = cProfile.Profile()
            prof.enable()
            serve(engine, 512, 1, 4)
            prof.disable()
            text = io.StringIO()
            pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(30)
            profiled = text.getvalue()
        del engine
        gc.collect()
        torch.cuda.empty_cache()
    lo, hi = counts[0], counts[-1]
    table = []
    for mode in args.launch.split(","):
        for case in CASES:
            (h0, s0), (h1, s1) = rows[(lo, mode)][case], rows[(hi, mode)][case]
            per_host, per_span = (h1 - h0) / (hi - lo), (s1 - s0) / (hi - lo)
            table.append({"launch": mode, "case": case,
                          "host_per_layer_us": per_host * 1e6,
                          "host_fixed_ms": (h1 - per_host * hi) * 1e3,
                          "gpu_per_layer_us": per_span * 1e6,
                          "gpu_fixed_ms": (s1 - per_span * hi) * 1e3,
                          f"host_L{hi}_ms": h1 * 1e3, f"gpu_L{hi}_ms": s1 * 1e3})
            lines.append(json.dumps({k: round(v, 3) if isinstance(v, float) else v
                                     for k, v in table[-1].items()}))
    lines += [f"cProfile of a 512-token prefill + 4 decode steps, {hi} layers, direct launch:",
              profiled or ""]
    report = "\n".join(lines)
    print(report)
    with open(args.out, "w") as f:
        f.write(report)
    with open(args.out.rsplit(".", 1)[0] + ".json", "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "rows": table}, f, indent=1)


if __name__ == "__main__":
    main()
