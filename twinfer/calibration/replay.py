"""Replay an executor run's steps through the twin's cost model, one step at a time.

Every step of a results JSON (docs/RESULTS.md) records its batch composition (phase,
sequences, tokens, KV tokens attended) and how long it took. Feeding the same
composition to the scenario's ``PipelineModel`` gives the twin's time for exactly that
step, free of any scheduling difference: what is left between the two is the cost
model's error (per phase, per step) and what no kernel sweep shows (host and launch
overhead, fitted by ``overheads``).

A step's measured time is its share of the run: on a one-stage pipeline the time from
its start to the start of the pipeline's next step (the host's scheduling, sampling
and plan broadcast included; the last step: its wall time); with pipeline stages,
where micro-batches overlap, its wall time from plan to sampled tokens. The twin's
time for it is the sum of its stages and hand-offs (the latency of one micro-batch).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from twinfer.sim.profile import Profile
from twinfer.sim.stage import StepBatch
from twinfer.sim.twin import build_twin
from twinfer.spec import Scenario, SpecError, scenario_from_dict

RESULTS_SCHEMA = "twinfer.exec.results/1"


@dataclass(frozen=True)
class StepReplay:
    """One executor step next to the twin's time for the same batch."""

    phase: str  # "prefill" | "decode"
    batch: int
    tokens: int
    measured_s: float
    predicted_s: float  # the twin's time, the profile's overheads included
    kernels_s: float  # the same without the fixed overheads (step_s or
    # prefill_step_s, per_layer_s) and the eager steps' host floor
    layers: int  # layers of the pipeline's first stage
    stages: int
    gpus: int = 1  # GPUs of the pipeline: more than one means a driver with followers
    host_s: float | None = None  # the driver's host time enqueueing its stage (recorded
    # by this session's executor; None in older results)
    run: int = 0  # which of several runs the step came from (set by the overheads fit)
    tail_s: float = 0.0  # what the last stage's GPU runs after an eager step's last
    # launch (StageCost.tail_s): a host-paced step ends that long after its floor


def check_results(doc: object, where: str = "results") -> dict:
    """An executor results document, or a one-line SpecError saying what it is not."""
    if not isinstance(doc, dict) or doc.get("schema") != RESULTS_SCHEMA:
        found = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        raise SpecError(where, f"is not an executor results JSON (schema {found!r}, "
                        f"expected {RESULTS_SCHEMA!r})", "give a file written by twinfer exec")
    for key in ("scenario", "summary", "steps", "options"):
        if key not in doc:
            raise SpecError(f"{where}.{key}", "is missing", "regenerate it with twinfer exec")
    return doc


def run_scenario(doc: dict) -> Scenario:
    """The scenario the executor ran, as it served it (``--arrivals batch``: all at 0)."""
    data = dict(doc["scenario"])
    if doc["options"].get("arrivals") == "batch":
        workload = dict(data.get("workload", {}))
        workload["arrival"] = {"kind": "batch"}
        data["workload"] = workload
    return scenario_from_dict(data)


def step_batch(step: dict) -> StepBatch:
    """The twin's description of one executor step's composition."""
    n = int(step["batch"])
    if step["phase"] == "decode":
        return StepBatch(decode_n=n, decode_ctx_sum=int(step["context_tokens"]), logits_n=n)
    tokens = int(step["tokens"])
    base, extra = divmod(tokens, n)  # prompt lengths are not recorded: an even split
    chunks = tuple((base + (1 if i < extra else 0), 0) for i in range(n))
    return StepBatch(decode_n=0, decode_ctx_sum=0, chunks=chunks, prefill_tokens=tokens,
                     logits_n=n)


def _measured_s(steps: list[dict], one_stage: bool) -> list[float]:
    """Each step's measured time (see the module docstring), in the order given."""
    if not one_stage:
        return [float(s["wall_s"]) for s in steps]
    out = [float(s["wall_s"]) for s in steps]
    by_pipe: dict[int, list[int]] = defaultdict(list)
    for i, s in enumerate(steps):
        by_pipe[s["pipeline"]].append(i)
    for idx in by_pipe.values():
        idx.sort(key=lambda i: steps[i]["start_s"])
        for a, b in zip(idx, idx[1:], strict=False):
            out[a] = float(steps[b]["start_s"] - steps[a]["start_s"])
    return out


def profile_for_run(doc: dict, profile: Profile | None = None) -> Profile | None:
    """The profile to price an executor run with (None: the ones the run's scenario
    resolves to, per GPU type), told that the run's decode steps ran eager when the
    executor ran without CUDA graphs (``--no-cuda-graphs``, or a failed capture)."""
    if doc["summary"].get("cuda_graphs", True):
        return profile
    if profile is None:
        from twinfer.sim import resolve_profiles

        profiles = resolve_profiles(run_scenario(doc))
        if len(profiles) != 1:
            return profile  # several GPU types: their own flags
        profile = next(iter(profiles.values()))
    if not profile.overheads.cuda_graphs:
        return profile
    overheads = profile.overheads.model_copy(update={"cuda_graphs": False})
    return profile.model_copy(update={"overheads": overheads})


def replay(doc: dict, profile: Profile | None = None) -> list[StepReplay]:
    """The twin's time for every step of an executor run (``profile`` for every GPU
    type; default: the profiles the scenario resolves to)."""
    twin = build_twin(run_scenario(doc), profile_for_run(doc, profile))
    steps = doc["steps"]
    drivers = {str(r["rank"]) for r in doc.get("ranks", []) if r.get("driver")}
    one_stage = all(len(p.stages) == 1 for p in twin.pipelines)
    measured = _measured_s(steps, one_stage)
    out = []
    for step, measured_s in zip(steps, measured, strict=True):
        pipe = twin.pipelines[int(step["pipeline"])]
        batch = step_batch(step)
        times, _, hops = pipe.step(batch)
        kernels = sum(stage.kernels_s(batch) for stage in pipe.stages) + sum(hops)
        predicted = pipe.lead_s + sum(times) + sum(hops)
        out.append(StepReplay(step["phase"], int(step["batch"]), int(step["tokens"]),
                              measured_s, predicted, kernels,
                              pipe.stages[0].spec.num_layers, len(pipe.stages),
                              sum(len(g) for g in pipe.gpus), _driver_host_s(step, drivers),
                              tail_s=pipe.stages[-1].tail_s(batch)))
    return out


def _driver_host_s(step: dict, drivers: set[str]) -> float | None:
    for rank, rec in step.get("ranks", {}).items():
        if rank in drivers and rec.get("host_s") is not None:
            return float(rec["host_s"])
    return None


def phase_totals(replays: list[StepReplay]) -> dict[str, dict[str, float]]:
    """Per phase: steps, measured and predicted seconds summed over the run."""
    out: dict[str, dict[str, float]] = {}
    for phase in ("prefill", "decode"):
        rows = [r for r in replays if r.phase == phase]
        out[phase] = {"steps": len(rows), "measured_s": sum(r.measured_s for r in rows),
                      "predicted_s": sum(r.predicted_s for r in rows)}
    return out
