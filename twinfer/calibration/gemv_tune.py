"""Measure where the skinny decode GEMM beats cuBLAS on this GPU, and with which launch.

``python -m twinfer.calibration.gemv_tune [--out PATH] [--presets llama-3-8b,...] [--tp 1,2,4,8]``
(one CUDA GPU): for every weight shape [N, K] of the presets' layers and LM head under
the TP degrees, time each launch configuration of `twinfer.kernels.gemv` at m = 1
(CUDA-core and tensor-core variants) and at m = 16 (tensor cores), with the calibration's
timing (a GPU-side spin before each rep, weights rotated through more than L2, median),
and ``F.linear`` at m = 1, 2, 4, 8, 16. Per shape the table keeps the best launch for
one row and for several, and ``max_m``: the largest m up to which the kernel was faster
at every measured m (0: cuBLAS everywhere). Written into ``--out`` (default: the
package's ``gemv_tables.json``) under this GPU's name, keeping other GPUs' entries, via
a temporary file and a rename.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from twinfer.kernels.gemv import MAX_M, TABLES, GemvConfig, read_tables, skinny_linear

M_POINTS = (1, 2, 4, 8, 16)


def configs(n: int, sms: int, one_row: bool) -> list[GemvConfig]:
    """The launch space for an [n, *] weight (pruned to keep the tuner near a minute per
    GPU: deep pipelining only, which a pure stream wants); split K only when N alone
    gives fewer programs than SMs."""
    out = []
    for block_n, block_k, warps in itertools.product((16, 32, 64), (128, 256, 512), (4, 8)):
        programs = -(-n // block_n)
        splits = [1] + [s for s in (2, 4, 8) if programs < sms and programs * s <= 4 * sms]
        for split in splits:
            for fma in ((True, False) if one_row else (False,)):
                out.append(GemvConfig(block_n, block_k, warps, 4, split, fma))
    return out


def weight_shapes(presets: list[str], tps: list[int]) -> list[tuple[int, int]]:
    from twinfer.calibration.shapes import _valid_tp, model_gemms
    from twinfer.spec import model_preset

    shapes: dict[tuple[int, int], None] = {}
    for name in presets:
        model = model_preset(name)
        for tp in tps:
            if _valid_tp(model, tp):
                shapes.update({(g.n, g.k): None for g in model_gemms(model, tp)})
    return list(shapes)


def _timer(device: torch.device, quick: bool):
    from twinfer.calibration.timing import TimingConfig, cache_bytes, measure, rotations

    timing = TimingConfig.quick() if quick else TimingConfig(max_reps=30, target_s=0.02)
    l2 = cache_bytes(device)
    inputs: dict[tuple[int, int, int], list] = {}

    def time_op(op, m: int, n: int, k: int) -> float:
        if (m, n, k) not in inputs:
            inputs.clear()  # one shape at a time: free the last one's weights
            ws = (n * k + m * k) * 2
            inputs[(m, n, k)] = [
                (torch.randn(m, k, device=device, dtype=torch.bfloat16),
                 torch.randn(n, k, device=device, dtype=torch.bfloat16) / k**0.5)
                for _ in range(rotations(ws, l2))]
        sets = inputs[(m, n, k)]
        with torch.inference_mode():
            return measure(lambda i: op(*sets[i % len(sets)]), device, timing)

    return time_op


def tune_shape(n: int, k: int, time_op, sms: int) -> dict:
    def best(m: int, space: list[GemvConfig]) -> tuple[GemvConfig, float]:
        timed = []
        for cfg in space:
            try:
                timed.append((time_op(lambda x, w, c=cfg: skinny_linear(x, w, c), m, n, k),
                              cfg))
            except Exception as exc:  # a launch the compiler rejects (resources): skip it
                print(f"    {cfg}: {type(exc).__name__}", file=sys.stderr)
        t, cfg = min(timed, key=lambda p: p[0])
        return cfg, t

    ours, cublas = {}, {}
    one_row, ours[1] = best(1, configs(n, sms, one_row=True))
    cublas[1] = time_op(F.linear, 1, n, k)
    rows, ours[MAX_M] = best(MAX_M, configs(n, sms, one_row=False))
    cublas[MAX_M] = time_op(F.linear, MAX_M, n, k)
    for m in M_POINTS[1:-1]:
        ours[m] = time_op(lambda x, w: skinny_linear(x, w, rows), m, n, k)
        cublas[m] = time_op(F.linear, m, n, k)
    max_m = 0
    for m in M_POINTS:
        if ours[m] >= cublas[m]:
            break
        max_m = m
    return {"one_row": one_row.to_dict(), "rows": rows.to_dict(), "max_m": max_m,
            "triton_us": {str(m): round(ours[m] * 1e6, 2) for m in M_POINTS},
            "cublas_us": {str(m): round(cublas[m] * 1e6, 2) for m in M_POINTS}}


def write_table(path: Path, device_name: str, entries: dict) -> None:
    doc = read_tables(path)
    doc.setdefault(device_name, {}).update(entries)  # a subset run keeps the other shapes
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(TABLES))
    p.add_argument("--presets", default="llama-3-8b")
    p.add_argument("--tp", default="1,2,4,8")
    p.add_argument("--quick", action="store_true")
    ns = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: gemv_tune needs a CUDA GPU", file=sys.stderr)
        return 2
    device = torch.device("cuda", torch.cuda.current_device())
    name = torch.cuda.get_device_name(device)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    shapes = weight_shapes(ns.presets.split(","), [int(t) for t in ns.tp.split(",")])
    time_op = _timer(device, ns.quick)
    entries, t0 = {}, time.monotonic()
    print(f"{name}: {len(shapes)} weight shapes", flush=True)
    for i, (n, k) in enumerate(shapes, 1):
        e = tune_shape(n, k, time_op, sms)
        entries[f"{n},{k}"] = e
        gb = 2 * n * k / 1e9
        print(f"[{i}/{len(shapes)} {time.monotonic() - t0:5.0f} s] N={n:6d} K={k:5d}: m=1 "
              f"{gb / e['triton_us']['1'] * 1e6:6.0f} GB/s (cuBLAS "
              f"{gb / e['cublas_us']['1'] * 1e6:6.0f}), m=16 {e['triton_us']['16']:.1f} us "
              f"(cuBLAS {e['cublas_us']['16']:.1f}); max_m {e['max_m']}", flush=True)
        write_table(Path(ns.out), name, entries)  # as it goes: a cut run keeps its shapes
    print(f"wrote {ns.out} ({name}, {len(entries)} shapes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
