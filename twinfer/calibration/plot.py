"""One PNG per profile: what was measured and how the fits sit on it.

Panels: GEMM achieved TFLOP/s vs m per (n, k) shape; decode attention achieved GB/s
of KV read vs context per batch; prefill attention TFLOP/s vs prompt tokens;
element-wise GB/s vs bytes; the square GEMM run back to back (sustained TFLOP/s over
time against the burst peak); and per link kind the collectives' time vs bytes, each
op's samples as markers and its alpha-beta line drawn through them, with the
all-reduce replayed from a CUDA graph as open markers.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

DOCS_DIR = Path(__file__).resolve().parents[2] / "docs" / "calibration"
OP_COLORS = {"all_reduce": "C0", "all_gather": "C1", "reduce_scatter": "C2",
             "broadcast": "C3", "send_recv": "C4"}


def _gemm(ax, samples: list[dict]) -> None:
    by_shape: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for s in samples:
        by_shape[(s["n"], s["k"])].append(s)
    shapes = sorted(by_shape, key=lambda nk: nk[0] * nk[1])
    cmap = _cmap(len(shapes))
    for i, shape in enumerate(shapes):
        pts = sorted(by_shape[shape], key=lambda s: s["m"])
        m = np.array([s["m"] for s in pts])
        tflops = np.array([2 * s["m"] * s["n"] * s["k"] / s["time_s"] / 1e12 for s in pts])
        label = f"n={shape[0]} k={shape[1]}" if i % max(1, len(shapes) // 8) == 0 else None
        ax.plot(m, tflops, "-o", ms=2, lw=0.8, color=cmap(i), label=label)
    ax.set(xscale="log", xlabel="m (tokens)", ylabel="TFLOP/s", title="GEMM [m,k]x[k,n]")
    ax.legend(fontsize=5, loc="upper left")


def _decode(ax, samples: list[dict], dtype_bytes: int) -> None:
    curves: dict[tuple, list[dict]] = defaultdict(list)
    for s in samples:
        curves[(s["batch"], s["q_heads"], s["kv_heads"], s["head_dim"])].append(s)
    batches = sorted({k[0] for k in curves})
    seen = set()
    for key, pts in sorted(curves.items()):
        pts.sort(key=lambda s: s["context"])
        ctx = np.array([s["context"] for s in pts])
        kv = np.array([2 * s["batch"] * s["context"] * s["kv_heads"] * s["head_dim"]
                       * dtype_bytes for s in pts])
        gbs = kv / np.array([s["time_s"] for s in pts]) / 1e9
        color = f"C{batches.index(key[0]) % 10}"
        label = None if key[0] in seen else f"batch {key[0]}"
        seen.add(key[0])
        ax.plot(ctx, gbs, "-o", ms=2, lw=0.7, color=color, label=label)
    ax.set(xscale="log", xlabel="context (tokens)", ylabel="KV GB/s",
           title="decode attention (all head configs)")
    ax.legend(fontsize=6)


def _prefill(ax, samples: list[dict]) -> None:
    curves: dict[tuple, list[dict]] = defaultdict(list)
    for s in samples:
        curves[(s["q_heads"], s["kv_heads"], s["head_dim"])].append(s)
    for i, (key, pts) in enumerate(sorted(curves.items())):
        pts.sort(key=lambda s: s["tokens"])
        n = np.array([s["tokens"] for s in pts], dtype=float)
        # causal: half of the 4 * n^2 * heads * head_dim FLOPs of full attention
        flops = 2.0 * n * n * key[0] * key[2]
        ax.plot(n, flops / np.array([s["time_s"] for s in pts]) / 1e12, "-o", ms=2, lw=0.8,
                color=_cmap(len(curves))(i), label=f"{key[0]}/{key[1]} heads")
    ax.set(xscale="log", xlabel="prompt tokens", ylabel="TFLOP/s",
           title="prefill attention (causal)")
    ax.legend(fontsize=5)


def _elementwise(ax, samples: list[dict], copy_bytes_per_s: float) -> None:
    pts = sorted(samples, key=lambda s: s["bytes"])
    x = np.array([s["bytes"] for s in pts], dtype=float)
    ax.plot(x, x / np.array([s["time_s"] for s in pts]) / 1e9, "-o", ms=3, label="measured")
    ax.axhline(copy_bytes_per_s / 1e9, ls="--", color="gray", lw=0.8, label="copy peak")
    ax.set(xscale="log", xlabel="bytes (read + write)", ylabel="GB/s",
           title="element-wise (norm, RoPE, SwiGLU, copy)")
    ax.legend(fontsize=6)


def _collectives(ax, link: str, ops: dict) -> None:
    for op, by_ranks in ops.items():
        for ranks, fit in sorted(by_ranks.items()):
            pts = sorted(fit["samples"], key=lambda s: s["bytes"])
            color = OP_COLORS.get(op, "k")
            style = "-" if ranks == "2" else "--"
            if not pts:  # a fallback line (datasheet): drawn, marked as unmeasured
                xs = np.geomspace(4096, 256 << 20, 64)
                ax.plot(xs, (fit["alpha_s"] + xs / fit["bytes_per_s"]) * 1e6, ":", lw=0.9,
                        color=color, label=f"{op} x{ranks}: not measured (fallback)")
                continue
            x = np.array([s["bytes"] for s in pts], dtype=float)
            ax.plot(x, [s["time_s"] * 1e6 for s in pts], "o", ms=3, color=color)
            xs = np.geomspace(x.min(), x.max(), 64)
            ax.plot(xs, (fit["alpha_s"] + xs / fit["bytes_per_s"]) * 1e6, style, lw=0.9,
                    color=color, label=f"{op} x{ranks} ({fit['residual_rel']:.0%})")
            graph = sorted(fit.get("graph_samples", []), key=lambda s: s["bytes"])
            if graph:
                ax.plot([s["bytes"] for s in graph], [s["time_s"] * 1e6 for s in graph],
                        "o", ms=4, mfc="none", color=color,
                        label=f"{op} x{ranks}, CUDA-graph replay")
            oneshot = sorted(fit.get("oneshot_graph_samples", []), key=lambda s: s["bytes"])
            if oneshot:
                ax.plot([s["bytes"] for s in oneshot], [s["time_s"] * 1e6 for s in oneshot],
                        "^", ms=4, mfc="none", color=color,
                        label=f"{op} x{ranks}, one-shot symm-mem, graph replay")
    ax.set(xscale="log", yscale="log", xlabel="bytes per rank", ylabel="time (us)",
           title=f"collectives over {link}: samples and alpha-beta fits")
    ax.legend(fontsize=5)


def _sustained(ax, peaks: dict, dtype: str) -> None:
    pts = peaks["sustained_samples"]
    t = np.array([s["t_s"] for s in pts])
    ax.plot(t, [s["flops_per_s"] / 1e12 for s in pts], "-o", ms=2, lw=0.8,
            label=(peaks.get("sustained_gemms") or "8192^3 GEMM")[:60] + ", 50 ms windows")
    burst = peaks.get("sustained_burst_flops_per_s") or \
        peaks.get("matmul_flops_per_s", {}).get(dtype)
    if burst:
        ax.axhline(burst / 1e12, ls="--", color="gray", lw=0.8, label="burst rate")
        frac = peaks.get("sustained_matmul_fraction", 1.0)
        ax.axhline(frac * burst / 1e12, ls=":", color="C3", lw=0.9,
                   label=f"sustained ({frac:.3f} of peak)")
    ax.set(xlabel="seconds of back-to-back GEMMs", ylabel="TFLOP/s",
           title="sustained tensor-core throughput")
    ax.legend(fontsize=6)


def _cmap(n: int):
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    return lambda i: cmap(i / max(1, n - 1))


def plot_profile(profile: dict, out: Path | None = None) -> Path:
    """Write the profile's PNG (default docs/calibration/<name>.png); returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out) if out else DOCS_DIR / f"{profile['name']}.png"
    ops, links = profile.get("ops", {}), profile.get("collectives", {})
    dtype = ops.get("gemm", {}).get("dtype", "bf16")
    dtype_bytes = 4 if dtype == "fp32" else 2
    panels = [(k, ops[k]["samples"]) for k in ("gemm", "decode_attention", "prefill_attention",
                                               "elementwise") if ops.get(k, {}).get("samples")]
    if profile.get("peaks", {}).get("sustained_samples"):
        panels.append(("sustained", None))
    count = len(panels) + len(links)
    cols = 3 if count > 4 else 2
    rows = max(1, -(-count // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    flat = list(axes.flat)
    for ax, (kind, samples) in zip(flat, panels, strict=False):
        if kind == "gemm":
            _gemm(ax, samples)
        elif kind == "decode_attention":
            _decode(ax, samples, dtype_bytes)
        elif kind == "prefill_attention":
            _prefill(ax, samples)
        elif kind == "sustained":
            _sustained(ax, profile["peaks"], dtype)
        else:
            _elementwise(ax, samples, profile["peaks"]["copy_bytes_per_s"])
    for ax, (link, link_ops) in zip(flat[len(panels):], links.items(), strict=False):
        _collectives(ax, link, link_ops)
    for ax in flat[count:]:
        ax.axis("off")
    device = profile.get("device", {})
    fig.suptitle(f"{profile['name']} ({profile['source']}): {device.get('name', '')}, "
                 f"torch {device.get('torch', '')}, {device.get('date', '')[:10]}", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m twinfer.calibration.plot PROFILE.json [OUT.png]``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (1, 2):
        print("usage: python -m twinfer.calibration.plot PROFILE.json [OUT.png]",
              file=sys.stderr)
        return 2
    from twinfer.calibration.profile_build import read_profile_dict

    out = plot_profile(read_profile_dict(Path(args[0])), Path(args[1]) if len(args) == 2 else None)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
