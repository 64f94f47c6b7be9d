"""Calibration profile, schema version 1: what one GPU type measured, as the twin reads it.

A profile is the per-GPU-type data behind the execution-time predictor (Vidur keeps
the same split: profiling data per device, a predictor that reads it). It holds the
device's peaks, raw samples per operation (GEMM, decode and prefill attention,
element-wise), fitted alpha-beta lines per collective, link kind and group size,
fixed overheads and memory reservations. Every op section may be empty: the cost
model then falls back to a roofline from ``peaks`` and says so in its provenance.

The schema is documented field by field in docs/PROFILE.md. Loading validates
strictly (unknown keys rejected); a corrupt file, a foreign document or a newer
schema version is a one-line ``SpecError``. ``save_profile`` writes atomically.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from twinfer.spec.cluster import LinkKind
from twinfer.spec.errors import SpecError, pydantic_to_spec_error
from twinfer.spec.io import write_json_atomic

SCHEMA_VERSION = 1

Source = Literal["measured", "coarse first measurements", "datasheet", "cpu-measured"]
CollectiveOp = Literal["all_reduce", "all_gather", "reduce_scatter", "broadcast", "send_recv"]
COLLECTIVE_OPS: tuple[str, ...] = ("all_reduce", "all_gather", "reduce_scatter", "broadcast",
                                   "send_recv")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceInfo(_Strict):
    """The device and software the samples were taken on."""

    name: str
    memory_bytes: int = Field(gt=0)
    sm_count: int = Field(0, ge=0)
    l2_bytes: int = Field(0, ge=0)
    driver: str = ""
    cuda: str = ""
    torch: str = ""
    triton: str = ""
    nccl: str = ""
    date: str = ""
    host: str = ""


class SustainedSample(_Strict):
    """One window of a GEMM run back to back: when it ended and the FLOP/s it achieved."""

    t_s: float = Field(gt=0)
    flops_per_s: float = Field(gt=0)


class Peaks(_Strict):
    """Best throughputs seen: memory traffic (read + write counted) and matmul per dtype.

    ``sustained_matmul_fraction``: the share of the burst matmul rate a GPU keeps when
    its tensor cores stay busy for seconds (power and clock limits); the cost model
    slows compute-bound GEMMs and prefill attention by it (docs/PROFILE.md).
    """

    copy_bytes_per_s: float = Field(gt=0)
    matmul_flops_per_s: dict[str, float] = Field(default_factory=dict)
    sustained_matmul_fraction: float = Field(1.0, gt=0, le=1)
    sustained_samples: list[SustainedSample] = Field(default_factory=list)
    sustained_burst_flops_per_s: float | None = Field(
        None, gt=0, description="the burst rate of the GEMMs the sustained run cycled "
        "through, timed as the sweeps time them (None: the square GEMM's peak)")
    sustained_gemms: str | None = Field(None, description="what the sustained run cycled "
                                        "through (None: the 8192^3 square GEMM)")

    @field_validator("matmul_flops_per_s")
    @classmethod
    def _positive(cls, value: dict[str, float]) -> dict[str, float]:
        for dtype, flops in value.items():
            if flops <= 0:
                raise ValueError(f"matmul_flops_per_s[{dtype!r}] must be positive")
        return value


class GemmSample(_Strict):
    """[m, k] x [k, n] took ``time_s``."""

    m: int = Field(ge=1)
    n: int = Field(ge=1)
    k: int = Field(ge=1)
    time_s: float = Field(gt=0)


class DecodeAttentionSample(_Strict):
    """One decode step of ``batch`` sequences, each attending over ``context`` KV tokens."""

    batch: int = Field(ge=1)
    context: int = Field(ge=1)
    q_heads: int = Field(ge=1)
    kv_heads: int = Field(ge=1)
    head_dim: int = Field(ge=1)
    time_s: float = Field(gt=0)
    first_time_s: float | None = Field(None, gt=0, description="the first timing of a "
                                       "sample re-timed because it was slower than a "
                                       "larger batch at the same context")


class PrefillAttentionSample(_Strict):
    """Causal attention over one prompt of ``tokens`` tokens."""

    tokens: int = Field(ge=1)
    q_heads: int = Field(ge=1)
    kv_heads: int = Field(ge=1)
    head_dim: int = Field(ge=1)
    time_s: float = Field(gt=0)


class ElementwiseSample(_Strict):
    """A memory-bound kernel that moved ``bytes`` (read + write)."""

    bytes: int = Field(ge=1)
    time_s: float = Field(gt=0)


class _OpSamples(_Strict):
    """What every op section has besides its samples: the build of the kernels that
    took them and how they were timed."""

    kernels: str | None = Field(None, description="the kernels' code fingerprint when "
                                "these samples were taken (twinfer.fingerprint); None: not "
                                "recorded")
    timing: Literal["eager", "graph"] | None = Field(
        None, description="how the samples were timed: 'graph', back to back inside a CUDA "
        "graph (a sample of 1 ms or more between events, where the launch gap is under "
        "0.3%); 'eager', one launch between two events (CPU: wall clock); None: not "
        "recorded (eager)")


class GemmOp(_OpSamples):
    dtype: str = "bf16"
    samples: list[GemmSample] = Field(default_factory=list)


class DecodeAttentionOp(_OpSamples):
    samples: list[DecodeAttentionSample] = Field(default_factory=list)


class PrefillAttentionOp(_OpSamples):
    samples: list[PrefillAttentionSample] = Field(default_factory=list)


class ElementwiseOp(_OpSamples):
    samples: list[ElementwiseSample] = Field(default_factory=list)


class Ops(_Strict):
    gemm: GemmOp = GemmOp()
    decode_attention: DecodeAttentionOp = DecodeAttentionOp()
    prefill_attention: PrefillAttentionOp = PrefillAttentionOp()
    elementwise: ElementwiseOp = ElementwiseOp()

    def timed_one_by_one(self) -> list[str]:
        """The sections holding samples not timed back to back (``timing`` other than
        'graph'; docs/PROFILE.md)."""
        return [kind for kind in type(self).model_fields
                if (op := getattr(self, kind)).samples and op.timing != "graph"]

    def taken_elsewhere(self, kernels: str) -> list[str]:
        """The sections whose samples record another build of the kernels than
        ``kernels`` (sections that record none are not counted)."""
        return [kind for kind in type(self).model_fields
                if (mine := getattr(self, kind).kernels) and mine != kernels]


class CollectiveSample(_Strict):
    """``bytes``: the tensor size per rank as torch.distributed sees it (docs/PROFILE.md)."""

    bytes: int = Field(ge=1)
    time_s: float = Field(gt=0)


class CollectiveFit(_Strict):
    """Hockney's alpha-beta line ``t = alpha_s + bytes / bytes_per_s`` and its samples."""

    alpha_s: float = Field(ge=0)
    bytes_per_s: float = Field(gt=0)
    samples: list[CollectiveSample] = Field(default_factory=list)
    residual_rel: float = Field(0.0, ge=0)
    graph_samples: list[CollectiveSample] = Field(
        default_factory=list, description="the op replayed from a CUDA graph (small "
        "messages, as decode steps run it): no host launch per op")
    oneshot_samples: list[CollectiveSample] = Field(
        default_factory=list, description="all_reduce only: the executor's one-shot "
        "symmetric-memory kernel (twinfer.exec.symm_allreduce), eager, up to the largest "
        "size it takes; the executor uses it for every message up to that size")
    oneshot_graph_samples: list[CollectiveSample] = Field(
        default_factory=list, description="the same kernel replayed from a CUDA graph")
    fallback: str | None = Field(None, description="not measured: where the line comes "
                                 "from (a datasheet figure, another profile's alpha)")


class Overheads(_Strict):
    """Per-step time no kernel sweep shows (docs/PROFILE.md): ``step_s`` per decode step
    (and per prefill step unless ``prefill_step_s`` says otherwise: prefill runs eager,
    decode replays CUDA graphs), plus ``per_layer_s`` per layer. ``per_layer_s`` may be
    negative with CUDA graphs: the sweeps time tiny kernels at their launch-bound floor,
    which a graph replay undercuts."""

    step_s: float = Field(0.0, ge=0, description="host + launch time per executor step")
    prefill_step_s: float | None = Field(None, ge=0, description="the same per prefill step "
                                         "(None: step_s)")
    per_layer_s: float = Field(0.0, description="launch time per layer per step")
    follower_step_s: float = Field(0.0, ge=0, description="more host time per step when "
                                   "the driver has TP followers: the plan's trip to them "
                                   "and their launch")
    eager_layer_s: float = Field(0.0, ge=0, description="host time to launch one layer of "
                                 "an eager decode step (no CUDA graphs: FA Pool, KV-sharded, "
                                 "--no-cuda-graphs) on a stage without TP collectives: such "
                                 "a step takes at least layers x this (0: no floor)")
    eager_tp_layer_s: float = Field(0.0, ge=0, description="the same for a layer with TP "
                                    "collectives (each a c10d call from the host)")
    prefill_tp_layer_s: float = Field(0.0, ge=0, description="host time per layer of a "
                                      "prefill step with TP collectives: its floor (0: none)")
    prefill_layer_s: float = Field(0.0, ge=0, description="host time per layer of a prefill "
                                   "step on one GPU per stage: with prefill_host_s, the "
                                   "floor of such a step (0: none)")
    prefill_host_s: float = Field(0.0, ge=0, description="the fixed part of that floor "
                                  "(embedding, final norm, LM head, inputs)")
    seq_s: float = Field(0.0, ge=0, description="host time per sequence of a step on the "
                         "driver (scheduling, sampling, the plan's arrays)")
    stage_step_s: float = Field(0.0, ge=0, description="host time a step costs each "
                                "pipeline stage before the last: the plan's trip from the "
                                "driver and the stage's own launch, on its critical path")
    cuda_graphs: bool = False
    comm_overlap: float = Field(0.0, ge=0, le=1, description="share of TP collectives hidden")
    executor: dict[str, str | int] | None = Field(
        None, description="the executor switches of the runs these overheads were fitted "
        "from (their results' `switches`, less `env`); `twinfer compare` notes a run that "
        "differs")

    @model_validator(mode="after")
    def _negative_only_with_graphs(self) -> Overheads:
        if self.per_layer_s < 0 and not self.cuda_graphs:
            raise ValueError("per_layer_s < 0 only with cuda_graphs (graph replay undercuts "
                             "the sweeps' launch-bound kernel floor)")
        return self

    def eager_floor_s(self, layers: int, tp: int, prefill: bool = False) -> float:
        """The least time an eager step of ``layers`` layers takes: the host launches
        every kernel from Python, and the GPU cannot finish before the last launch."""
        if prefill:
            if tp > 1:
                return layers * self.prefill_tp_layer_s
            return self.prefill_host_s + layers * self.prefill_layer_s if self.prefill_layer_s \
                else 0.0
        return layers * (self.eager_tp_layer_s if tp > 1 else self.eager_layer_s)

    def fixed_s(self, layers: int, driver: bool, prefill: bool,
                followers: bool = False) -> float:
        """The overhead a stage of ``layers`` layers adds to one step; the step terms go
        to the stage whose leader drives the pipeline (the executor's last stage: it
        samples, schedules and sends the next plan while its GPU waits), the follower
        term when its TP peers must get that plan before the step's collectives can run.
        (``stage_step_s`` is no stage's time: it delays a pipelined step, see
        `twinfer.sim.stage.PipelineModel`.)"""
        step = self.step_s
        if prefill and self.prefill_step_s is not None:
            step = self.prefill_step_s
        if followers:
            step += self.follower_step_s
        # per_layer_s corrects the swept kernels of a decode layer (graph replay
        # undercuts their launch-bound floor); an eager prefill layer has no such term
        layer_s = 0.0 if prefill else self.per_layer_s * layers
        return layer_s + (step if driver else 0.0)


class MemoryInfo(_Strict):
    workspace_bytes: int = Field(0, ge=0, description="runtime reservation per GPU")
    activation_bytes_per_token: int = Field(0, ge=0, description="per token in a step")


Collectives = dict[LinkKind, dict[CollectiveOp, dict[str, CollectiveFit]]]


class Profile(_Strict):
    """One GPU type's calibration profile (schema version 1)."""

    schema_version: Literal[1] = 1
    name: str
    source: Source
    device: DeviceInfo
    peaks: Peaks
    ops: Ops = Ops()
    collectives: Collectives = Field(default_factory=dict)
    overheads: Overheads = Overheads()
    memory: MemoryInfo = MemoryInfo()
    notes: list[str] = Field(default_factory=list)

    @field_validator("collectives")
    @classmethod
    def _ranks_keys(cls, value: Collectives) -> Collectives:
        for link, ops in value.items():
            for op, by_ranks in ops.items():
                for ranks in by_ranks:
                    if not ranks.isdigit() or int(ranks) < 2:
                        raise ValueError(f"collectives.{link}.{op}: key {ranks!r} must be a "
                                         "group size >= 2 written as a string, e.g. \"2\"")
        return value

    @property
    def is_calibrated(self) -> bool:
        """False for datasheet-derived profiles, whose predictions are not measured."""
        return self.source != "datasheet"

    def collective(self, link: str, op: str, ranks: int) -> CollectiveFit | None:
        return self.collectives.get(link, {}).get(op, {}).get(str(ranks))  # type: ignore[call-overload]

    def summary(self) -> str:
        return f"{self.name} ({self.device.name}, {self.source}, {self.device.date or 'undated'})"


# ---- reading and writing -------------------------------------------------------------
def profiles_dir() -> Path:
    """The shipped profiles: twinfer/calibration/profiles/."""
    return Path(__file__).resolve().parents[1] / "calibration" / "profiles"


def shipped_profiles() -> dict[str, Path]:
    """GPU-type name -> shipped profile path."""
    folder = profiles_dir()
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.glob("*.json"))}


def load_profile(source: str | Path) -> Profile:
    """A profile from a JSON path, or a shipped one by GPU-type name (``h200-sxm``)."""
    path = Path(source)
    if not path.exists():
        shipped = shipped_profiles()
        if str(source) not in shipped:
            raise SpecError("profile", f"{source} is neither a file nor a shipped profile",
                            f"give a profile JSON path or one of: {', '.join(shipped) or 'none'}")
        path = shipped[str(source)]
    stat = path.stat()
    return _load_cached(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _load_cached(path_str: str, mtime_ns: int, size: int) -> Profile:
    path = Path(path_str)
    field = f"profile {path.name}"
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise SpecError(field, f"cannot be read ({exc.strerror})", "check the path") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f" at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise SpecError(field, f"is not valid JSON{where}",
                        "regenerate it with `twinfer calibrate` or restore the file") from None
    return profile_from_dict(data, field)


def profile_from_dict(data: object, field: str = "profile") -> Profile:
    """Validate a parsed profile document; foreign or newer documents are a SpecError."""
    if not isinstance(data, dict) or "schema_version" not in data:
        raise SpecError(field, "is not a twinfer profile (no schema_version)",
                        "give a JSON written by `twinfer calibrate`")
    version = data["schema_version"]
    if version != SCHEMA_VERSION:
        raise SpecError(f"{field}.schema_version",
                        f"is {version!r}; this twinfer reads version {SCHEMA_VERSION}",
                        "upgrade twinfer or regenerate the profile with this version")
    try:
        return Profile(**data)
    except ValidationError as exc:
        raise pydantic_to_spec_error(exc, field) from None


def save_profile(profile: Profile, path: str | Path) -> Path:
    """Write ``profile`` as JSON atomically (temporary file, then ``os.replace``)."""
    path = Path(path)
    write_json_atomic(path, profile.model_dump(mode="json"))
    return path
