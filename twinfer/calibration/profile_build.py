"""From measured groups to a profile JSON (schema v1, ``twinfer.sim.profile``).

Compute samples go into ``ops`` as they were measured; each curve's quality (leave-one-
out log-log interpolation error, monotonicity) is summarized in ``notes`` (schema v1
has no field for it; ``curve_report`` recomputes it from the samples). Each
collective (link kind, op, group size) gets its alpha-beta fit. Peaks are the best
achieved: copy bandwidth (read + write) over the copy sweep, FLOP/s over the GEMMs.
Overheads stay zero until fitted from an executor timeline (``overheads``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from twinfer.calibration.fit import CurveQuality, curve_quality, fit_alpha_beta
from twinfer.calibration.plan import ELEMENTWISE, OPS, SweepPlan
from twinfer.fingerprint import kernels_fingerprint
from twinfer.spec import SpecError
from twinfer.spec.io import write_json_atomic

SCHEMA_VERSION = 1
MIN_COPY_BYTES = 1 << 20


def _curves(kind: str, samples: list[dict]) -> dict[str, tuple[list[float], list[float]]]:
    """The measured curves of one op kind: name -> (sizes, times)."""
    curves: dict[str, tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    for s in samples:
        if kind == "gemm":
            key, size = f"{s['n']}x{s['k']}", s["m"]
        elif kind == "elementwise":
            key, size = s.get("op", "elementwise"), s["bytes"]
        else:
            key = f"{s['q_heads']}x{s['kv_heads']}x{s['head_dim']}"
            if kind == "decode_attention":
                key, size = f"{key}/b{s['batch']}", s["context"]
            else:
                size = s["tokens"]
        curves[key][0].append(size)
        curves[key][1].append(s["time_s"])
    return curves


def curve_report(kind: str, samples: list[dict]) -> dict[str, CurveQuality]:
    """Interpolation quality of every curve of one op kind (two or more points)."""
    return {key: curve_quality(x, t) for key, (x, t) in _curves(kind, samples).items()
            if len(set(x)) >= 2}


def _quality_note(kind: str, samples: list[dict]) -> str:
    report = curve_report(kind, samples)
    if not report:
        return ""
    worst = max(report, key=lambda k: report[k].loo_rel_max)
    med = float(np.median([q.loo_rel_median for q in report.values()]))
    drop = max(q.non_monotone_rel for q in report.values())
    return (f"fit {kind}: {len(report)} curves, log-log leave-one-out error median "
            f"{med:.1%}, worst {report[worst].loo_rel_max:.1%} ({worst}); largest "
            f"non-monotone drop {drop:.1%}")


def elementwise_curve(samples: list[dict]) -> list[dict]:
    """One bytes -> time curve from the per-op samples: at each swept size, the median
    bytes and median time over the ops (the cost model has one element-wise curve, and a
    running maximum over mixed ops would make it the slowest op's)."""
    by_op: dict[str, list[dict]] = defaultdict(list)
    for s in samples:
        by_op[s.get("op", "")].append(s)
    rows = min(len(v) for v in by_op.values())
    curve = []
    for i in range(rows):
        at = [sorted(v, key=lambda s: s["bytes"])[i] for v in by_op.values()]
        curve.append({"bytes": int(np.median([s["bytes"] for s in at])),
                      "time_s": float(np.median([s["time_s"] for s in at]))})
    return curve


def _collectives(groups: list[dict]) -> dict:
    out: dict = {}
    for g in groups:
        samples = g["samples"]
        if len({s["bytes"] for s in samples}) < 3:
            continue
        ab = fit_alpha_beta([s["bytes"] for s in samples], [s["time_s"] for s in samples])
        out.setdefault(g["link"], {}).setdefault(g["op"], {})[str(g["ranks"])] = {
            "alpha_s": ab.alpha_s, "bytes_per_s": ab.bytes_per_s, "samples": samples,
            "residual_rel": round(ab.residual_rel, 5),
            **{k: g[k] for k in ("graph_samples", "oneshot_samples", "oneshot_graph_samples")
               if g.get(k)}}
    return out


def _peaks(samples: dict[str, list[dict]], dtype: str) -> dict:
    peak_runs = samples.get("peaks", [])
    elementwise = samples.get("elementwise", []) + [s for s in peak_runs if "bytes" in s]
    copy = [s["bytes"] / s["time_s"] for s in elementwise
            if s.get("op") == "copy" and s["bytes"] >= MIN_COPY_BYTES]
    copy = copy or [s["bytes"] / s["time_s"] for s in elementwise]
    gemms = samples.get("gemm", []) + [s for s in peak_runs if "m" in s]
    flops = [2.0 * s["m"] * s["n"] * s["k"] / s["time_s"] for s in gemms]
    out = {"copy_bytes_per_s": max(copy, default=0.0),
           "matmul_flops_per_s": {dtype: max(flops, default=0.0)}}
    burst = [2.0 * s["m"] * s["n"] * s["k"] / s["time_s"] for s in peak_runs if "m" in s]
    sustained = samples.get("sustained", [])
    windows = [w for w in sustained if "t_s" in w]
    mix = next((w for w in sustained if "burst_flops_per_s" in w), None)
    if mix is not None and windows:  # the prefill's GEMMs: their own burst rate
        out["sustained_matmul_fraction"] = sustained_fraction(windows,
                                                              mix["burst_flops_per_s"])
        out["sustained_burst_flops_per_s"] = mix["burst_flops_per_s"]
        out["sustained_gemms"] = mix["gemms"]
        out["sustained_samples"] = windows
    elif burst and windows:
        out["sustained_matmul_fraction"] = sustained_fraction(windows, max(burst))
        out["sustained_samples"] = windows
    return out


def sustained_fraction(windows: list[dict], burst_flops_per_s: float) -> float:
    """The rate a GPU keeps once settled (median over the run's second half) over the
    burst rate of the same GEMM, at most 1."""
    end = windows[-1]["t_s"]
    settled = [w["flops_per_s"] for w in windows if w["t_s"] >= end / 2] or \
        [w["flops_per_s"] for w in windows]
    return round(min(1.0, float(np.median(settled)) / burst_flops_per_s), 4)


def build_profile(groups: dict[str, dict], info: dict, plan: SweepPlan, name: str,
                  notes: list[str]) -> dict:
    """The profile dict of one calibration run (schema v1)."""
    samples: dict[str, list[dict]] = defaultdict(list)
    for g in groups.values():
        if g["kind"] != "collective":
            samples[g["kind"]].extend(g["samples"])
    peaks = _peaks(samples, plan.dtype)
    notes = [*notes, f"twinfer calibrate on {info.get('name')}: presets "
             f"{', '.join(plan.presets)}, {plan.dtype}; collective bytes = tensor per "
             "rank (docs/PROFILE.md); send_recv = half a ping-pong; the element-wise curve "
             f"is the median over {', '.join(ELEMENTWISE)} at each swept size"]
    notes += [n for kind in OPS[:4] if (n := _quality_note(kind, samples[kind]))]
    ops: dict = {kind: {"samples": samples[kind]} for kind in OPS[:3] if samples[kind]}
    if samples["elementwise"]:
        ops["elementwise"] = {"samples": elementwise_curve(samples["elementwise"])}
    fingerprint = kernels_fingerprint()
    # which build of the kernels these samples describe, and how they were timed
    # (sweep_compute: back to back in CUDA graphs on a GPU)
    for section in ops.values():
        section["kernels"] = fingerprint
        section["timing"] = "graph" if plan.device == "cuda" else "eager"
    if "gemm" in ops:
        ops["gemm"]["dtype"] = plan.dtype
    return {
        "schema_version": SCHEMA_VERSION, "name": name,
        "source": "measured" if plan.device == "cuda" else "cpu-measured",
        "device": info, "peaks": peaks, "ops": ops,
        "collectives": _collectives([g for g in groups.values() if g["kind"] == "collective"]),
        "overheads": {"step_s": 0.0, "per_layer_s": 0.0, "cuda_graphs": False,
                      "comm_overlap": 0.0},
        "memory": {"workspace_bytes": 0, "activation_bytes_per_token": 0},
        "notes": notes,
    }


def carry_over(profile: dict, previous: dict) -> None:
    """Keep what this run could not measure from the profile it replaces: collectives
    of link kinds or group sizes absent now (one GPU measures none), op kinds that
    ``--ops`` left out, and the overheads fitted from an executor timeline. Each
    carried item is named in ``notes``."""
    carried = []
    for link, ops in previous.get("collectives", {}).items():
        for op, by_ranks in ops.items():
            for ranks, fit in by_ranks.items():
                here = profile["collectives"].setdefault(link, {}).setdefault(op, {})
                if ranks not in here:
                    here[ranks] = fit
                    carried.append(f"{link}/{op}/{ranks}")
    for link in [k for k, v in profile["collectives"].items() if not v]:
        del profile["collectives"][link]
    if carried:
        profile["notes"].append(f"collectives carried over from the previous {previous['name']} "
                                f"profile ({previous['source']}): {', '.join(carried)}")
    kept = [kind for kind in previous.get("ops", {}) if kind not in profile["ops"]]
    for kind in kept:  # --ops left them out: the previous run's samples stand
        profile["ops"][kind] = previous["ops"][kind]
    if "gemm" in kept:
        for dtype, flops in previous.get("peaks", {}).get("matmul_flops_per_s", {}).items():
            mine = profile["peaks"]["matmul_flops_per_s"]
            mine[dtype] = max(flops, mine.get(dtype, 0.0))
    if kept:
        profile["notes"].append(f"op samples carried over from the previous profile (this run "
                                f"did not measure them): {', '.join(kept)}")
    over = previous.get("overheads", {})
    # anything fitted (a profile may fit no step_s but a host floor or stage delay)
    if any(v for k, v in over.items() if k not in ("cuda_graphs", "comm_overlap")):
        profile["overheads"] = dict(over)
        profile["notes"].append("overheads carried over from the previous profile: refit them "
                                "with `twinfer calibrate --from-exec RESULTS.json`")


def validate_profile(profile: dict, where: str = "profile") -> object:
    """Validate against the twin's schema; a bad profile is a ``SpecError``."""
    from twinfer.sim.profile import profile_from_dict

    return profile_from_dict(profile, where)


def write_profile(profile: dict, path: Path) -> None:
    """Validate, then write atomically (a temporary file, then ``os.replace``)."""
    validate_profile(profile, str(path))
    write_json_atomic(Path(path), profile)


def read_profile_dict(path: Path) -> dict:
    """A profile JSON as a dict, validated; unreadable or foreign files are a SpecError."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise SpecError(str(path), f"cannot be read ({exc.strerror})", "check the path") from None
    except json.JSONDecodeError as exc:
        raise SpecError(str(path), f"is not valid JSON ({exc.msg} at line {exc.lineno})",
                        "give a profile written by twinfer calibrate") from None
    validate_profile(data, str(path))
    return data
