"""Metrics of a simulation and their JSON form (schema in docs/OUTPUT.md).

Latency metrics follow common serving practice (vLLM's benchmarks, Vidur's metrics
store): time to first token (TTFT) from arrival to the first output token, time per
output token (TPOT) over the rest of a request's tokens, end-to-end latency (E2E),
each as mean, median and 99th percentile over requests; output tokens per second
(TPS) over the makespan (first arrival to last finish).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from twinfer import __version__
from twinfer.spec.io import write_json_atomic

OUTPUT_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Stat:
    """Mean, median and 99th percentile of a per-request metric (NaN when empty)."""

    mean: float
    p50: float
    p99: float

    @classmethod
    def of(cls, values: np.ndarray) -> Stat:
        values = values[~np.isnan(values)]
        if values.size == 0:
            return cls(math.nan, math.nan, math.nan)
        return cls(float(values.mean()), float(np.percentile(values, 50)),
                   float(np.percentile(values, 99)))


@dataclass(frozen=True)
class GpuReport:
    gpu: int
    gpu_type: str
    pipeline: int
    stage: int
    busy_fraction: float  # computing or in a TP collective, share of the makespan
    comm_fraction: float  # in TP collectives or sending to the next stage
    capacity_bytes: int
    usable_bytes: int
    weights_bytes: int
    workspace_bytes: int
    kv_capacity_bytes: int
    kv_peak_bytes: int


@dataclass(frozen=True)
class LinkReport:
    pipeline: int
    from_stage: int
    link: str
    busy_fraction: float


@dataclass
class SimResult:
    """A prediction for one scenario. ``per_request`` holds arrays (not in the JSON)."""

    scenario: str
    engine: str  # "simpy" or "fast"
    model: str
    layout: str
    num_gpus: int
    requests: int
    output_tokens: int
    makespan_s: float
    ttft_s: Stat
    tpot_s: Stat
    e2e_s: Stat
    tps: float
    requests_per_s: float
    comm_share: float
    gpus: list[GpuReport]
    links: list[LinkReport]
    profiles: dict[str, dict[str, str]]
    provenance: list[str]
    warnings: list[str]
    steps: int
    generated_tokens: int = 0  # counted by the engine step by step (== output_tokens)
    wall_s: float = 0.0
    per_request: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("per_request")
        return {"schema_version": OUTPUT_SCHEMA_VERSION, "twinfer": __version__,
                **_finite(data)}

    def to_json(self, path: str | Path) -> Path:
        """Write the result as JSON, atomically."""
        path = Path(path)
        write_json_atomic(path, self.to_dict())
        return path


def _finite(value: object) -> object:
    """NaN and infinities become null: JSON has no spelling for them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def latency_stats(arrival_s: np.ndarray, first_token_s: np.ndarray, finish_s: np.ndarray,
                  output_tokens: np.ndarray) -> dict[str, np.ndarray]:
    """Per-request TTFT, TPOT and E2E (TPOT is NaN for one-token outputs)."""
    ttft = first_token_s - arrival_s
    e2e = finish_s - arrival_s
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(output_tokens > 1, (finish_s - first_token_s) / (output_tokens - 1),
                        np.nan)
    return {"ttft_s": ttft, "tpot_s": tpot, "e2e_s": e2e}
