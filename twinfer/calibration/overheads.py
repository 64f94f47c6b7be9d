"""Overheads no kernel sweep shows, fitted from the executor's own timeline.

A step of the executor costs its kernels plus what the host adds: Python building the
step, launching each layer's kernels (gone where CUDA graphs replay decode), sampling,
the plan broadcast. At small batch this dominates (Vidur leaves host overhead out by
default, and its users report large errors against real engines). The twin charges
``overheads.step_s`` once per decode step and ``overheads.prefill_step_s`` once per
prefill step on a pipeline's last stage (the driver's), plus ``overheads.seq_s`` per
sequence of the step there, and ``overheads.per_layer_s`` per decode layer on every
stage (``twinfer.sim.stage``).

Runs with followers (TP > 1) cost the driver more per step: the plan's trip to the
other ranks and their launch come before the step's collectives can run (0.43-0.65 ms
on two H200s against 0.19 ms on one). Given one-GPU runs too, the fit takes
``step_s`` and ``per_layer_s`` from those alone and ``overheads.follower_step_s`` as
the mean of what the runs with followers' decode steps leave over them. Runs with
pipeline stages give ``overheads.stage_step_s``, the delay a pipelined step takes per
stage before the last (the plan's trip from the driver to that stage and its launch):
the value with which the twin, every other term fitted, reproduces those runs' mean
TPOT. A step's own wall time cannot give it, since with two micro-batches in flight it
includes waiting for the stages the other micro-batch holds.

``fit_overheads`` replays every step of one or more one-stage executor runs through
the cost model with the overheads left out (``replay``) and fits the rest,
``measured - kernels``, per phase, because the two phases run differently: decode
replays a CUDA graph, prefill runs eager (its first step of a run also pays what the
warm-up did not: new GEMM and attention shapes). Decode steps fit
``step_s + per_layer_s * layers + seq_s * batch`` by least squares (``seq_s`` where
the runs' batch sizes differ: the GPU campaign runs 4 and 32 requests); with CUDA
graphs ``per_layer_s`` may come out negative, and is kept: the sweeps time each tiny
decode kernel (a norm of one token, a 4 KB RoPE) at its launch-bound floor, which a
graph replay undercuts, so summed sweep times overstate a 32-layer graph more than an
8-layer one. Without graphs the terms are non-negative (NNLS).

A one-GPU prefill step is eager and, at a few hundred tokens, paced by the host: the
executor records the driver's host time enqueueing each step (``host_s``), and the
prefill steps' host times fit its floor ``prefill_host_s + prefill_layer_s * layers``
(each run once, by its median: the host's speed differs from process to process).
Prefill steps then fit ``prefill_step_s`` as the mean of what is left after
``max(kernels, floor + tail)`` and ``seq_s``, the tail being what the GPU runs after the
host's last launch (the LM head, its gather and sampling: ``StageCost.tail_s``; a
host-paced H100 prefill ended 0.22-0.25 ms after that launch). Without the tail the
constant absorbed it and charged it to kernel-bound prefills too. No step is
dropped as an outlier: the host's occasional stalls are part of what a served token
costs, and mean TPOT and TPS include them. The layer term can only be told apart by
runs whose layer counts differ; with one layer count everything goes to the step
terms and the fit says so.

Before this split one constant served both phases: on the H200 runs the decode steps
(kernels above measured by ~0.4 ms at 32 layers) and the prefill steps (~7 ms above)
pulled it apart, non-negative least squares returned ``step_s = 0`` with a 1.3 ms
residual, and prefill lost its overhead.

Eager steps (every prefill; decode without CUDA graphs, and always for the FA Pool and
KV-sharded layouts) are launched kernel by kernel from Python, and with small work per
layer the host, not the GPU, sets their pace: one 512-token prompt under TP=2 took
38.7-51.8 ms on two H200s against 11-15 ms of kernels, its NCCL kernels waiting for
the peer's host to launch its side. The twin prices such a step as
``max(kernels, floor + tail)`` plus the step terms, the floor being ``layers x`` a host time
per layer: for eager decode ``eager_layer_s`` (``eager_tp_layer_s`` for a layer with TP
collectives, each a c10d call), fitted from the decode steps of runs without graphs
(``--no-cuda-graphs``; the GPU campaign adds one at TP=1 and, with two GPUs, one at
TP=2): what each step took beyond the step terms and its tail, per layer. For prefill
``prefill_tp_layer_s``, fitted the same way from the prefill steps of the TP=2 overhead
runs (after ``prefill_step_s``, which the one-GPU runs fit), over those the host bound.
A one-GPU prefill's floor comes from its recorded host time (above), not from these
inferences: the third session's overhead runs packed four 256-token prompts into one
1024-token prefill step, kernel-bound, so no host time per prefill layer could be
told from them; this session's overhead runs prefill one prompt per step.

``comm_overlap`` stays 0: the executor issues its collectives on the compute stream,
so its timeline's communication intervals are disjoint from compute and nothing is
hidden; the measured communication share is reported in the notes instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from twinfer.calibration.fit import fit_linear_nonneg
from twinfer.calibration.replay import StepReplay, check_results, replay
from twinfer.sim.profile import Overheads, Profile, load_profile
from twinfer.spec import SpecError


@dataclass(frozen=True)
class EagerFit:
    """Host time per layer of eager steps, from decode steps of runs without graphs."""

    layer_s: float  # one GPU per stage: eager_layer_s
    steps: int
    host_bound: int  # steps whose host time exceeded their kernels (else an upper bound)
    tp_layer_s: float = 0.0  # with TP collectives: eager_tp_layer_s
    tp_steps: int = 0
    tp_host_bound: int = 0
    prefill_tp_layer_s: float = 0.0  # prefill steps with TP collectives, host-bound ones
    prefill_tp_steps: int = 0
    prefill_tp_host_bound: int = 0

    def note(self) -> str:
        out = (f"eager_layer_s {self.layer_s * 1e6:.1f} us ({self.steps} eager decode steps, "
               f"{self.host_bound} host-bound)")
        if self.tp_steps:
            out += (f", eager_tp_layer_s {self.tp_layer_s * 1e6:.1f} us ({self.tp_steps} "
                    f"steps with TP, {self.tp_host_bound} host-bound)")
        if self.prefill_tp_steps:
            out += (f", prefill_tp_layer_s {self.prefill_tp_layer_s * 1e6:.1f} us "
                    f"({self.prefill_tp_steps} prefill steps with TP, "
                    f"{self.prefill_tp_host_bound} host-bound)")
        return out


@dataclass(frozen=True)
class OverheadFit:
    step_s: float
    per_layer_s: float
    rms_s: float  # root mean square residual of the fit over all steps
    steps: int
    layer_counts: tuple[int, ...]
    cuda_graphs: bool
    comm_share: float  # measured communication share of the ranks' step time
    prefill_step_s: float | None = None  # None: no prefill steps to fit
    prefill_steps: int = 0
    follower_step_s: float = 0.0  # from runs with followers, over the one-GPU step_s
    follower_steps: int = 0
    eager: EagerFit | None = None  # from runs without CUDA graphs, when given
    seq_s: float = 0.0  # host time per sequence of a step (runs with several batch sizes)
    batch_sizes: int = 1  # distinct batch sizes among the decode steps fitted
    prefill_host: tuple[float, float, int] | None = None  # (fixed s, per layer s, steps)
    stage_step_s: float = 0.0  # from runs with pipeline stages, per stage before the last
    stage_steps: int = 0  # runs with pipeline stages it was fitted to
    executor: dict | None = None  # the runs' executor switches (None: not recorded)

    def note(self, sources: list[str]) -> str:
        split = ("" if len(self.layer_counts) > 1 else
                 f"; one layer count ({self.layer_counts[0]}): all of it in step_s")
        prefill = ("" if self.prefill_step_s is None else
                   f", prefill_step_s {self.prefill_step_s * 1e6:.1f} us "
                   f"({self.prefill_steps} prefill steps)")
        if self.prefill_host is not None:
            fixed, layer, n = self.prefill_host
            prefill += (f", prefill floor {fixed * 1e6:.0f} us + {layer * 1e6:.1f} us per "
                        f"layer (host time of {n} one-GPU prefill steps)")
        if self.batch_sizes > 1:
            prefill += f", seq_s {self.seq_s * 1e6:.2f} us ({self.batch_sizes} batch sizes)"
        if self.follower_steps:
            prefill += (f", follower_step_s {self.follower_step_s * 1e6:.1f} us "
                        f"({self.follower_steps} decode steps with followers)")
        if self.stage_steps:
            prefill += (f", stage_step_s {self.stage_step_s * 1e6:.1f} us "
                        f"({self.stage_steps} runs with pipeline stages)")
        if self.eager is not None:
            prefill += ", " + self.eager.note()
        return (f"overheads fitted from {self.steps} executor steps of "
                f"{', '.join(sources)} (layers {list(self.layer_counts)}, CUDA graphs "
                f"{self.cuda_graphs}): step_s "
                f"{self.step_s * 1e6:.1f} us{prefill}, per_layer_s "
                f"{self.per_layer_s * 1e6:.2f} us, "
                f"residual rms {self.rms_s * 1e6:.1f} us{split}; comm_overlap 0 (collectives "
                f"on the compute stream; measured comm share {self.comm_share:.1%})")


def load_results(path: Path) -> dict:
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as exc:
        raise SpecError(str(path), f"cannot be read ({exc.strerror})", "check the path") from None
    except json.JSONDecodeError as exc:
        raise SpecError(str(path), f"is not valid JSON ({exc.msg} at line {exc.lineno})",
                        "give a results JSON written by twinfer exec") from None
    return check_results(doc, str(path))


def _comm_share(docs: list[dict]) -> float:
    comm = span = 0.0
    for doc in docs:
        for rank in doc.get("ranks", []):
            if rank.get("comm_s") is not None and rank.get("span_s"):
                comm += rank["comm_s"]
                span += rank["span_s"]
    return comm / span if span else 0.0


def _replays(docs: list[dict], bare: Profile) -> list[list[StepReplay]]:
    return [replay(doc, bare) for doc in docs]


def _one_stage_rows(replays: list[list[StepReplay]], first_run: int = 0) -> list[StepReplay]:
    rows: list[StepReplay] = []
    for i, steps in enumerate(replays, first_run):
        if any(r.stages > 1 for r in steps):
            continue  # micro-batches overlap: a step's wall time is not its own cost
        rows += [replace(r, run=i) for r in steps]
    return rows


def fit_overheads(docs: list[dict], profile: Profile) -> OverheadFit:
    """Fit the overheads to one-stage executor runs (see module doc). Given runs with
    CUDA graphs and runs without (a GPU campaign), the graph runs fit the step terms and
    the eager runs the host floor of eager steps; otherwise all runs fit the step terms."""
    bare = profile.model_copy(update={"overheads": Overheads()})
    eager_docs = [d for d in docs if not d["summary"].get("cuda_graphs")]
    graph_docs = [d for d in docs if d["summary"].get("cuda_graphs")]
    if not (graph_docs and eager_docs):
        graph_docs, eager_docs = docs, []
    graph_replays = _replays(graph_docs, bare)
    rows = graph_rows = _one_stage_rows(graph_replays)
    pipe_docs = [d for d, steps in zip(graph_docs, graph_replays, strict=True)
                 if any(r.stages > 1 for r in steps)]
    eager_rows = _one_stage_rows(_replays(eager_docs, bare), len(graph_docs))
    if len(rows) < 2:
        raise SpecError("--from-exec", "no one-stage executor steps to fit overheads to",
                        "give results of runs without pipeline stages (pp=1)")
    graphs = all(doc["summary"].get("cuda_graphs") for doc in graph_docs)
    # one-GPU runs fit the driver's own terms; runs with followers (TP > 1), when there
    # are both, then fit what a step costs more with followers. Alone, they fit it all.
    alone = [r for r in rows if r.gpus == 1]
    crowd = [r for r in rows if r.gpus > 1 and r.phase == "decode"]
    with_followers = bool(alone and crowd)
    if with_followers:
        rows = alone
    counts = tuple(sorted({r.layers for r in rows}))
    decode = [r for r in rows if r.phase == "decode"] or rows
    step_s, per_layer_s, seq_s = _fit_decode(decode, len(counts) > 1, graphs)
    follower_step_s = 0.0
    if with_followers:
        follower_step_s = max(0.0, float(np.mean(
            [r.measured_s - r.kernels_s - per_layer_s * r.layers - step_s - seq_s * r.batch
             for r in crowd])))
    prefill = [r for r in rows if r.phase == "prefill"]
    # prefill runs eager with or without decode graphs: every one-GPU run's prefill
    # steps tell the host's time per prefill layer
    host = _fit_prefill_host([r for r in prefill + eager_rows if r.phase == "prefill"
                              and r.gpus == 1 and r.host_s is not None])

    def prefill_floor(r: StepReplay) -> float:
        return host[0] + host[1] * r.layers if host else 0.0

    prefill_step_s = None
    if prefill and decode is not rows:
        left = [r.measured_s - max(r.kernels_s, prefill_floor(r) + r.tail_s) - seq_s * r.batch
                for r in prefill]
        prefill_step_s = max(0.0, float(np.mean(left)))
    eager = None
    if eager_docs:
        eager = _fit_eager(eager_rows, step_s, per_layer_s, follower_step_s, seq_s)
        if eager is not None and prefill_step_s is not None:
            with_tp = [r for r in graph_rows + eager_rows
                       if r.phase == "prefill" and r.gpus > 1]
            eager = _fit_prefill_floor(eager, with_tp, prefill_step_s, per_layer_s,
                                       follower_step_s)

    def resid(r: StepReplay) -> float:
        if r.phase == "prefill" and prefill_step_s is not None:
            return (r.measured_s - max(r.kernels_s, prefill_floor(r) + r.tail_s) - prefill_step_s
                    - seq_s * r.batch)
        return r.measured_s - r.kernels_s - step_s - per_layer_s * r.layers - seq_s * r.batch

    rms = float(np.sqrt(np.mean(np.square([resid(r) for r in rows]))))
    fit = OverheadFit(step_s, per_layer_s, rms, len(rows), counts, bool(graphs),
                      _comm_share(docs), prefill_step_s, len(prefill), follower_step_s,
                      len(crowd) if with_followers else 0, eager, seq_s,
                      len({r.batch for r in decode}), host,
                      executor=executor_switches(docs))
    return _fit_stage_step(fit, pipe_docs, profile) if pipe_docs else fit


def executor_switches(docs: list[dict]) -> dict | None:
    """The executor switches the runs share (results' ``switches`` less ``env``), None
    where none recorded them. Runs with different switches (PDL on in one, off in
    another) measured different executors: fitting one set of overheads to both is an
    error."""
    seen = {}
    for doc in docs:
        sw = doc.get("switches")
        if isinstance(sw, dict):
            seen[doc.get("scenario", {}).get("name", "?")] = {
                k: v for k, v in sorted(sw.items()) if k != "env"}
    if not seen:
        return None
    first_name, first = next(iter(seen.items()))
    for name, sw in seen.items():
        if sw != first:
            diff = ", ".join(f"{k} {first.get(k)!r} / {sw.get(k)!r}"
                             for k in sorted(set(first) | set(sw)) if first.get(k) != sw.get(k))
            raise SpecError("--from-exec", f"runs {first_name} and {name} ran different "
                            f"executor switches ({diff})",
                            "fit overheads from runs of one executor configuration")
    return first


def _fit_stage_step(fit: OverheadFit, docs: list[dict], profile: Profile) -> OverheadFit:
    """``stage_step_s`` from runs with pipeline stages: the delay per stage before the
    last that makes the twin, with every other fitted term, reproduce those runs' mean
    TPOT (bisection; the mean over the runs). A pipelined step's wall time cannot give
    it directly: with several micro-batches in flight it includes waiting for stages
    the other micro-batches hold, which the twin's engine adds itself."""
    from twinfer.compare import compare

    base = json.loads(profile.model_dump_json())
    measured = float(np.mean([d["summary"]["tpot_s"]["mean"] for d in docs]))

    def excess(stage_step_s: float) -> float:
        trial = Profile.model_validate(apply_overheads(
            base, replace(fit, stage_step_s=stage_step_s, stage_steps=1), []))
        return float(np.mean([compare(d, trial).predicted["tpot_mean_s"]
                              for d in docs])) - measured

    lo, hi = 0.0, 1e-3
    if excess(lo) >= 0:
        return replace(fit, stage_step_s=0.0, stage_steps=len(docs))
    while excess(hi) < 0 and hi < 1.0:
        lo, hi = hi, hi * 2
    for _ in range(24):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if excess(mid) < 0 else (lo, mid)
    return replace(fit, stage_step_s=(lo + hi) / 2, stage_steps=len(docs))


def _fit_prefill_host(rows: list[StepReplay]) -> tuple[float, float, int] | None:
    """(prefill_host_s, prefill_layer_s, steps): the driver's host time enqueueing a
    one-GPU prefill step, ``fixed + per layer x layers``, None without steps that
    recorded it (older results). The step cannot end before its last launch: the twin
    takes this as its floor.

    Each run counts once, by the median of its steps: the host's speed differs from
    process to process (the same 32-layer prefill enqueued in 12.7 ms in one H100 run
    and 19.9 ms in the next, docs/VALIDATION.md), and a run with many prefill steps
    should not outweigh the others. Non-negative least squares over the runs' (layers,
    median) points; with one layer count everything is per layer."""
    if not rows:
        return None
    runs: dict[int, list[StepReplay]] = {}
    for r in rows:
        runs.setdefault(r.run, []).append(r)
    layers = np.array([group[0].layers for group in runs.values()], dtype=float)
    host = np.array([np.median([r.host_s for r in group]) for group in runs.values()])
    if len(set(layers)) > 1:
        coef, _ = fit_linear_nonneg(np.column_stack([np.ones(len(host)), layers]), host)
        return float(coef[0]), float(coef[1]), len(rows)
    return 0.0, float(np.mean(host / layers)), len(rows)


def _fit_prefill_floor(eager: EagerFit, rows: list[StepReplay], prefill_step_s: float,
                       per_layer_s: float, follower_step_s: float) -> EagerFit:
    """``prefill_tp_layer_s`` from prefill steps with TP collectives: what such a step took
    beyond the prefill step terms and its tail (``StepReplay.tail_s``), per layer,
    averaged over the steps it bound (those whose host time exceeded their kernels); 0
    if none did. (One-GPU prefill has its own floor, `_fit_prefill_host`.)"""

    hosts = [(r.measured_s - prefill_step_s - follower_step_s, r) for r in rows]
    bound = [(h, r) for h, r in hosts if h > r.kernels_s]
    layer_s = float(np.mean([max(0.0, h - r.tail_s) / r.layers for h, r in bound])) \
        if bound else 0.0
    return replace(eager, prefill_tp_layer_s=layer_s, prefill_tp_steps=len(rows),
                   prefill_tp_host_bound=len(bound))


def _fit_eager(rows: list[StepReplay], step_s: float, per_layer_s: float,
               follower_step_s: float, seq_s: float = 0.0) -> EagerFit | None:
    """Host time per layer from eager decode steps (their median): what a step took
    beyond the step terms and its tail, per layer (``measured = max(kernels, layers * h
    + tail) + terms``, inverted where the host bound; a step whose kernels bound it gives
    an upper bound of ``h``, which the floor then never exceeds for that step's shape)."""
    def host_s(r: StepReplay) -> float:
        terms = (step_s + per_layer_s * r.layers + seq_s * r.batch
                 + (follower_step_s if r.gpus > 1 else 0.0))
        return max(0.0, r.measured_s - terms)

    decode = [r for r in rows if r.phase == "decode"]
    alone = [r for r in decode if r.gpus == 1]
    crowd = [r for r in decode if r.gpus > 1]
    if not alone and not crowd:
        return None

    def per_layer(group: list[StepReplay]) -> tuple[float, int, int]:
        if not group:
            return 0.0, 0, 0
        hosts = [host_s(r) for r in group]
        bound = sum(h > r.kernels_s for h, r in zip(hosts, group, strict=True))
        # the median: one step that compiled a kernel (0.59 s) or ran on a slowed host
        # must not set the floor of every eager step
        return float(np.median([max(0.0, h - r.tail_s) / r.layers
                                for h, r in zip(hosts, group, strict=True)])), len(group), bound

    layer_s, n, bound = per_layer(alone)
    tp_layer_s, tp_n, tp_bound = per_layer(crowd)
    return EagerFit(layer_s, n, bound, tp_layer_s, tp_n, tp_bound)


def _fit_decode(rows: list[StepReplay], split: bool,
                graphs: bool) -> tuple[float, float, float]:
    """(step_s, per_layer_s, seq_s) of ``measured - kernels = step_s + per_layer_s *
    layers + seq_s * batch``: least squares, ``per_layer_s`` free in sign with CUDA
    graphs (module doc), else NNLS; ``step_s`` and ``seq_s`` never negative. ``seq_s``
    is fitted only where the rows' batch sizes differ, ``per_layer_s`` where their
    layer counts do."""
    extra = np.array([r.measured_s - r.kernels_s for r in rows])
    columns = [np.ones(len(rows))]
    if split:
        columns.append(np.array([r.layers for r in rows], dtype=float))
    by_batch = len({r.batch for r in rows}) > 1
    if by_batch:
        columns.append(np.array([r.batch for r in rows], dtype=float))
    design = np.column_stack(columns)
    if graphs and split:
        coef, *_ = np.linalg.lstsq(design, extra, rcond=None)
        if by_batch and coef[-1] < 0:  # no negative host time per sequence: drop it
            return (*_fit_decode_graphs(design[:, :2], extra), 0.0)
        step_s, per_layer_s = _fit_decode_graphs(design[:, :2], extra - (
            design[:, 2] * coef[2] if by_batch else 0.0))
        return step_s, per_layer_s, float(coef[2]) if by_batch else 0.0
    coef, _ = fit_linear_nonneg(design, extra)
    coef = [float(c) for c in coef]
    step_s = coef[0]
    per_layer_s = coef[1] if split else 0.0
    return step_s, per_layer_s, coef[-1] if by_batch else 0.0


def _fit_decode_graphs(design: np.ndarray, extra: np.ndarray) -> tuple[float, float]:
    """(step_s, per_layer_s) by least squares on [1, layers]; a negative constant is no
    host time: then a fit through the origin."""
    (step_s, per_layer_s), *_ = np.linalg.lstsq(design, extra, rcond=None)
    if step_s >= 0:
        return float(step_s), float(per_layer_s)
    layers = design[:, 1]
    return 0.0, float(layers @ extra / (layers @ layers))


def apply_overheads(profile: dict, fit: OverheadFit, sources: list[str]) -> dict:
    """A copy of a profile dict with the fitted overheads and a note saying whence."""
    out = json.loads(json.dumps(profile))
    out["overheads"] = {"step_s": fit.step_s, "per_layer_s": fit.per_layer_s,
                        "cuda_graphs": fit.cuda_graphs, "comm_overlap": 0.0}
    if fit.prefill_step_s is not None:
        out["overheads"]["prefill_step_s"] = fit.prefill_step_s
    if fit.follower_steps:
        out["overheads"]["follower_step_s"] = fit.follower_step_s
    if fit.batch_sizes > 1:
        out["overheads"]["seq_s"] = fit.seq_s
    if fit.stage_steps:
        out["overheads"]["stage_step_s"] = fit.stage_step_s
    if fit.prefill_host is not None:
        out["overheads"]["prefill_host_s"] = fit.prefill_host[0]
        out["overheads"]["prefill_layer_s"] = fit.prefill_host[1]
    if fit.eager is not None:
        out["overheads"]["eager_layer_s"] = fit.eager.layer_s
        if fit.eager.tp_steps:
            out["overheads"]["eager_tp_layer_s"] = fit.eager.tp_layer_s
        if fit.eager.prefill_tp_steps:
            out["overheads"]["prefill_tp_layer_s"] = fit.eager.prefill_tp_layer_s
    if fit.executor is not None:
        out["overheads"]["executor"] = fit.executor
    out["notes"] = [n for n in out.get("notes", []) if not n.startswith("overheads ")]
    out["notes"].append(fit.note(sources))
    return out


def fit_overheads_into(results: list[Path], profile_src: str | Path,
                       out: str | Path = "") -> tuple[OverheadFit, Path]:
    """Fit overheads from executor results and write them into the profile (``out``,
    default: the profile file itself). Returns the fit and the path written."""
    from twinfer.calibration.profile_build import read_profile_dict, write_profile
    from twinfer.sim.profile import shipped_profiles

    docs = [load_results(p) for p in results]
    if not profile_src:
        raise SpecError("--profile", "no profile given to fit overheads into",
                        "pass --profile PROFILE.json (or a shipped profile name)")
    path = Path(profile_src)
    if not path.exists():
        path = shipped_profiles().get(str(profile_src), path)
    profile = load_profile(path)
    fit = fit_overheads(docs, profile)
    target = Path(out) if out else path
    write_profile(apply_overheads(read_profile_dict(path), fit, [p.name for p in results]),
                  target)
    return fit, target


def results_files(paths: list[Path]) -> list[Path]:
    """The results JSONs ``paths`` name: a folder stands for the ``*.json`` in it."""
    out = []
    for path in paths:
        if path.is_dir():
            found = sorted(path.glob("*.json"))
            if not found:
                raise SpecError(str(path), "is a folder without results JSONs",
                                "give executor results files or a folder holding them")
            out += found
        else:
            out.append(path)
    return out


def fit_overheads_cli(results: list[Path], profile_src: str | Path, out: str | Path) -> str:
    """The ``twinfer calibrate --from-exec`` verb: fit, write, and say what happened."""
    results = results_files(results)
    fit, target = fit_overheads_into(results, profile_src, out)
    return f"{fit.note([p.name for p in results])}\nwrote {target}"
