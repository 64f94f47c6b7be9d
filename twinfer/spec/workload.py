"""Workload: how many requests, how long their prompts and outputs, when they arrive.

Lengths are a fixed number or a distribution; arrivals are all at once (a batch),
a Poisson process, or a trace file (CSV with columns ``arrival_s,prompt_tokens,
output_tokens``). ``requests_from(workload)`` draws the concrete requests with the
workload's seed, so the twin and the executor see exactly the same ones.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from twinfer.spec.errors import SpecError


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UniformLength(_Frozen):
    dist: Literal["uniform"]
    min: int = Field(ge=1)
    max: int = Field(ge=1)

    @model_validator(mode="after")
    def _check(self) -> UniformLength:
        if self.max < self.min:
            raise ValueError(f"max={self.max} is below min={self.min}")
        return self

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.integers(self.min, self.max + 1, size=n)


class LognormalLength(_Frozen):
    """Lengths whose logarithm is normal with the given median and sigma, clipped."""

    dist: Literal["lognormal"]
    median: float = Field(gt=0)
    sigma: float = Field(ge=0)
    min: int = Field(1, ge=1)
    max: int = Field(1 << 20, ge=1)

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        x = rng.lognormal(np.log(self.median), self.sigma, size=n)
        return np.clip(np.rint(x), self.min, self.max).astype(np.int64)


LengthDist = Annotated[Union[UniformLength, LognormalLength], Field(discriminator="dist")]
Length = Union[Annotated[int, Field(ge=1)], LengthDist]


class BatchArrival(_Frozen):
    kind: Literal["batch"] = "batch"


class PoissonArrival(_Frozen):
    kind: Literal["poisson"]
    rate_per_s: float = Field(gt=0)


class TraceArrival(_Frozen):
    kind: Literal["trace"]
    path: str


Arrival = Annotated[Union[BatchArrival, PoissonArrival, TraceArrival],
                    Field(discriminator="kind")]


class WorkloadSpec(_Frozen):
    requests: int = Field(16, ge=1, le=10_000_000)
    prompt_tokens: Length = 512
    output_tokens: Length = 128
    arrival: Arrival = BatchArrival()
    seed: int = 0


class SchedulerSpec(_Frozen):
    """Iteration-level continuous batching (Orca/vLLM style)."""

    max_running: int = Field(256, ge=1, description="most sequences decoded together")
    max_prefill_tokens: int = Field(8192, ge=1, description="prompt tokens per prefill step")
    kv_block_tokens: int = Field(16, ge=1, description="paged-KV page size in tokens")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1.0)


@dataclass(frozen=True)
class Request:
    rid: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int


def _lengths(spec: Length, rng: np.random.Generator, n: int) -> np.ndarray:
    if isinstance(spec, int):
        return np.full(n, spec, dtype=np.int64)
    return spec.draw(rng, n).astype(np.int64)


def requests_from(workload: WorkloadSpec, base_dir: Path | None = None) -> list[Request]:
    """The concrete requests of a workload, drawn with its seed (deterministic)."""
    arrival = workload.arrival
    if isinstance(arrival, TraceArrival):
        return _read_trace(arrival.path, base_dir, workload.requests)
    rng = np.random.default_rng(workload.seed)
    n = workload.requests
    prompts = _lengths(workload.prompt_tokens, rng, n)
    outputs = _lengths(workload.output_tokens, rng, n)
    if isinstance(arrival, PoissonArrival):
        times = np.cumsum(rng.exponential(1.0 / arrival.rate_per_s, size=n))
    else:
        times = np.zeros(n)
    return [Request(i, float(times[i]), int(prompts[i]), int(outputs[i])) for i in range(n)]


def _read_trace(path_str: str, base_dir: Path | None, limit: int) -> list[Request]:
    path = Path(path_str)
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    if not path.exists():
        raise SpecError("workload.arrival.path", f"trace file {path} does not exist",
                        "give a CSV with columns arrival_s,prompt_tokens,output_tokens")
    out = []
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        need = {"arrival_s", "prompt_tokens", "output_tokens"}
        if not reader.fieldnames or not need <= set(reader.fieldnames):
            raise SpecError("workload.arrival.path", f"{path} lacks columns "
                            f"{sorted(need - set(reader.fieldnames or []))}",
                            "the header must be arrival_s,prompt_tokens,output_tokens")
        for i, row in enumerate(reader):
            if i >= limit:
                break
            try:
                req = Request(i, float(row["arrival_s"]), int(row["prompt_tokens"]),
                              int(row["output_tokens"]))
            except ValueError:
                raise SpecError("workload.arrival.path", f"{path} line {i + 2} is not numeric",
                                "fix that row") from None
            if req.prompt_tokens < 1 or req.output_tokens < 1 or req.arrival_s < 0:
                raise SpecError("workload.arrival.path", f"{path} line {i + 2} has a "
                                "non-positive length or negative time", "fix that row")
            out.append(req)
    if not out:
        raise SpecError("workload.arrival.path", f"{path} has no requests", "add rows")
    out.sort(key=lambda r: r.arrival_s)
    return [Request(i, r.arrival_s, r.prompt_tokens, r.output_tokens) for i, r in enumerate(out)]
