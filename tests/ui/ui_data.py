"""Data the dashboard tests share: a real executor results file, the FA Pool paper
scenario with explicit links, a profile with samples of every kind."""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).parent / "data"
# A real executor results JSON (a copy of docs/calibration/results/cpu/tp2_b1_c64.json):
# the tiny model, TP=2 over two gloo ranks on the CPU; the twin uses the shipped cpu
# profile. The tests check the plumbing, not the numbers.
RESULTS = DATA / "cpu_tp2_b1_c64_results.json"


def fa_pool_paper_doc() -> dict:
    """The shipped FA Pool paper scenario with its links given explicitly (H100-class
    NVLink and InfiniBand), so that it runs whatever collectives the shipped profiles
    hold."""
    from twinfer.ui.editor import load_doc, shipped_yaml

    doc = load_doc(shipped_yaml("fa_pool_paper"))
    doc["cluster"]["links"] = {"nvlink": {"bw_gbps": 450.0, "latency_us": 3.0},
                               "infiniband": {"bw_gbps": 50.0, "latency_us": 5.0}}
    return doc


def sampled_profile_doc(name: str = "toy-sampled") -> dict:
    """A profile whose every op has samples (times from a simple roofline: 1 TB/s,
    100 TFLOP/s, plus 5 us per kernel) and whose NVLink collectives have points."""

    def t(nbytes: float, flops: float = 0.0) -> float:
        return 5e-6 + max(nbytes / 1e12, flops / 100e12)

    gemm = [{"m": m, "n": n, "k": k, "time_s": t(2 * (m * k + k * n + m * n), 2 * m * n * k)}
            for n, k in ((4096, 4096), (14336, 4096)) for m in (1, 16, 256, 4096)]
    decode = [{"batch": b, "context": c, "q_heads": 32, "kv_heads": 8, "head_dim": 128,
               "time_s": t(2 * b * c * 8 * 128 * 2)}
              for b in (1, 8) for c in (256, 1024, 4096)]
    prefill = [{"tokens": n, "q_heads": 32, "kv_heads": 8, "head_dim": 128,
                "time_s": t(0, 2 * n * n * 32 * 128)} for n in (256, 1024, 4096)]
    elementwise = [{"bytes": b, "time_s": t(b)} for b in (1 << 20, 1 << 24, 1 << 28)]
    coll = [{"bytes": b, "time_s": 20e-6 + b / 200e9} for b in (4096, 1 << 20, 1 << 26)]
    return {
        "schema_version": 1, "name": name, "source": "measured",
        "device": {"name": "Toy GPU", "memory_bytes": 80 * 2**30, "torch": "2.13.0",
                   "date": "2026-01-01"},
        "peaks": {"copy_bytes_per_s": 1e12, "matmul_flops_per_s": {"bf16": 100e12}},
        "ops": {"gemm": {"dtype": "bf16", "samples": gemm},
                "decode_attention": {"samples": decode},
                "prefill_attention": {"samples": prefill},
                "elementwise": {"samples": elementwise}},
        "collectives": {"nvlink": {"all_reduce": {"2": {"alpha_s": 20e-6, "bytes_per_s": 200e9,
                                                        "samples": coll}}}},
        "notes": ["synthetic: for the dashboard tests"],
    }


