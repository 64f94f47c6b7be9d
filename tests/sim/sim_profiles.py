"""Synthetic profiles with round numbers, so expected times can be worked out by hand."""

from __future__ import annotations

from twinfer.sim.profile import Profile


def make_profile(**overrides: object) -> Profile:
    """1 TB/s copy, 100 TFLOP/s bf16/fp32, no samples, an NVLink all-reduce line."""
    doc = {
        "schema_version": 1, "name": "toy-gpu", "source": "datasheet",
        "device": {"name": "Toy GPU", "memory_bytes": 80 * 2**30},
        "peaks": {"copy_bytes_per_s": 1e12,
                  "matmul_flops_per_s": {"bf16": 100e12, "fp32": 100e12}},
        "collectives": {"nvlink": {"all_reduce": {"2": {"alpha_s": 10e-6,
                                                        "bytes_per_s": 100e9}}},
                        "infiniband": {"send_recv": {"2": {"alpha_s": 5e-6,
                                                           "bytes_per_s": 10e9}}}},
    }
    doc.update(overrides)
    return Profile(**doc)


