"""``twinfer calibrate``: run the sweeps on the visible device and write a profile.

Order of work: compute groups in priority order (the first preset's shapes first, so
that a time-boxed run has what the validation model needs), then the collectives job
under mpirun across the visible GPUs (two gloo ranks on CPU). Every finished group is
in the partial file (``store``); a rerun after an interruption skips those groups.
When all is done the profile is built (``profile_build``), validated against the
twin's schema, written atomically, and the partial file removed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from twinfer.calibration import PROFILES_DIR
from twinfer.calibration.plan import COLLECTIVES, ELEMENTWISE, OPS, SweepPlan, plan_for
from twinfer.calibration.shapes import GemmShape
from twinfer.calibration.store import PartialStore, partial_path
from twinfer.spec import SpecError

COMM_TIMEOUT_S = 900


@dataclass(frozen=True)
class CalibrateOptions:
    """What ``twinfer calibrate`` was asked to do."""

    out: Path | None = None  # None: twinfer/calibration/profiles/<name>.json
    device: str = "auto"  # "cuda", "cpu" or "auto" (cuda when visible)
    quick: bool = False
    ops: tuple[str, ...] = OPS
    name: str = ""  # profile name; default from the device (h100-sxm, cpu, ...)
    time_budget_s: float = 0.0  # 0: no limit on the compute sweeps
    comm_ranks: int = 0  # 0: every visible GPU, 2 on CPU
    progress: bool = True
    extra_notes: list[str] = field(default_factory=list)


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cuda", "cpu"):
        raise SpecError("--device", f"unknown device {device!r}", "use cuda, cpu or auto")
    if device == "cuda" and not torch.cuda.is_available():
        raise SpecError("--device", "cuda was asked for but no GPU is visible",
                        "run on a GPU machine or pass --device cpu")
    return device


def check_ops(ops: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [op for op in ops if op not in OPS and op not in COLLECTIVES]
    if unknown:
        raise SpecError("--ops", f"unknown op {unknown[0]!r}",
                        f"use some of {', '.join(OPS)} (or single collectives: "
                        f"{', '.join(COLLECTIVES)})")
    return ops


def comm_ops(ops: tuple[str, ...]) -> tuple[str, ...]:
    """The collectives to measure: all of them for "collectives", else those named."""
    if "collectives" in ops:
        return COLLECTIVES
    return tuple(op for op in COLLECTIVES if op in ops)


def compute_groups(plan: SweepPlan, ops: tuple[str, ...]) -> Iterator[tuple[str, Callable]]:
    """(key, measure(bench) -> group) for every compute group, most needed first."""
    from twinfer.calibration import sweep_compute as sc

    yield "peaks", lambda b: {"kind": "peaks", "samples": sc.peaks_group(b)}
    yield "sustained", lambda b: {"kind": "sustained", "samples": sc.sustained_group(b)}
    if "elementwise" in ops:
        for op in ELEMENTWISE:
            yield f"elementwise/{op}", lambda b, op=op: {
                "kind": "elementwise", "samples": sc.elementwise_group(b, op)}
    for item in plan.work:
        if isinstance(item, GemmShape):
            if "gemm" in ops:
                yield f"gemm/{item.n}x{item.k}", lambda b, s=item: {
                    "kind": "gemm", "samples": sc.gemm_group(b, s)}
            continue
        name = f"{item.q_heads}x{item.kv_heads}x{item.head_dim}"
        if "decode_attention" in ops:
            yield f"decode_attention/{name}", lambda b, h=item: {
                "kind": "decode_attention", "samples": sc.decode_group(b, h)}
        if "prefill_attention" in ops:
            yield f"prefill_attention/{name}", lambda b, h=item: {
                "kind": "prefill_attention", "samples": sc.prefill_group(b, h)}


def _load_average() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "unknown"


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class _PlainProgress:
    """A line per group on stderr, for a device image without rich."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.done, self.total = enabled, 0, 0

    def __enter__(self) -> _PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, _name: str, total: int, completed: int, group: str) -> int:
        self.total, self.done = total, completed
        return 0

    def update(self, _task: int, group: str) -> None:
        if self.enabled:
            _say(f"[{self.done + 1}/{self.total}] {group}")

    def advance(self, _task: int) -> None:
        self.done += 1


def _progress(enabled: bool):
    """A rich progress bar on stderr (a plain one where rich is missing)."""
    try:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )
    except ImportError:
        return _PlainProgress(enabled)
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("{task.fields[group]}"),
                    console=Console(stderr=True), disable=not enabled, transient=False)


def run_compute(plan: SweepPlan, store: PartialStore, opts: CalibrateOptions) -> list[str]:
    """Measure every compute group not yet in ``store``; returns the keys skipped for time."""
    import torch

    from twinfer.calibration.sweep_compute import Bench
    from twinfer.calibration.timing import TimingConfig

    if plan.device == "cpu":
        # One thread, as each executor rank runs on CPU: a second thread on a busy core
        # turns every parallel region into a scheduler-tick lottery (4-8 ms stalls).
        torch.set_num_threads(1)
    groups = list(compute_groups(plan, opts.ops))
    todo = [(k, fn) for k, fn in groups if not store.done(k)]
    if not todo:
        return []
    bench = Bench(plan, TimingConfig.quick() if opts.quick else TimingConfig())
    start, skipped = time.monotonic(), []
    with _progress(opts.progress) as bar:
        task = bar.add_task("compute", total=len(groups), completed=len(groups) - len(todo),
                            group="")
        for key, measure in todo:
            if opts.time_budget_s and time.monotonic() - start > opts.time_budget_s:
                skipped.append(key)
                continue
            bar.update(task, group=key)
            store.add(key, measure(bench))
            bar.advance(task)
    return skipped


def mpirun_argv(ranks: int, device: str, job: Path) -> tuple[list[str], dict[str, str]]:
    """The executor's own ``mpiexec`` command line and rank environment
    (``twinfer.exec.launch``), pointed at the collectives job instead of ``twinfer.exec``."""
    from twinfer.exec.launch import find_mpiexec, mpiexec_command, rank_env

    mpiexec = find_mpiexec()
    if mpiexec is None:
        raise SpecError("collectives", "mpiexec is not on PATH nor next to this Python",
                        "install Open MPI (the 'mpi' extra) or leave collectives out of --ops")
    env = rank_env(ranks, device)
    argv = mpiexec_command(mpiexec, ranks, [str(job)], env)
    module = argv.index("twinfer.exec")  # [..., python, -m, twinfer.exec, job]
    argv[module] = "twinfer.calibration.sweep_comm"
    return argv, env


def comm_ranks(device: str, requested: int) -> int:
    import torch

    if requested:
        return requested
    return torch.cuda.device_count() if device == "cuda" else 2


def run_collectives(plan: SweepPlan, store: PartialStore, opts: CalibrateOptions) -> str:
    """Run the collectives job under mpirun; returns the link kind measured, or ''."""
    from twinfer.calibration.device import link_kind
    from twinfer.calibration.sweep_comm import CommJob

    ranks = comm_ranks(plan.device, opts.comm_ranks)
    if ranks < 2:
        return ""
    link = link_kind(plan.device, ranks)
    with tempfile.TemporaryDirectory() as tmp:
        job_path = Path(tmp) / "job.json"
        ops = [op for op in plan.comm_ops if op in comm_ops(opts.ops)]
        CommJob(str(store.path), store.fingerprint, plan.comm_bytes, ops,
                plan.device, link, opts.quick).write(job_path)
        argv, env = mpirun_argv(ranks, plan.device, job_path)
        if opts.progress:
            _say(f"collectives: {ranks} ranks over {link} "
                 f"({len(ops)} ops x {len(plan.comm_bytes)} sizes)")
        proc = subprocess.run(argv, env=env, capture_output=True, text=True,
                              timeout=COMM_TIMEOUT_S)
    store.reload()
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise SpecError("collectives", f"the mpirun job failed (exit {proc.returncode}): {tail}",
                        "fix the MPI/torch.distributed setup or leave collectives out of --ops")
    return link


def calibrate(opts: CalibrateOptions) -> tuple[dict, Path]:
    """Run the sweeps (resuming a partial run) and write the profile; returns it and
    where it went."""
    from twinfer.calibration.device import default_name, device_info
    from twinfer.calibration.links import fill_unmeasured_links, shipped_siblings
    from twinfer.calibration.profile_build import (
        build_profile,
        carry_over,
        read_profile_dict,
        write_profile,
    )

    device = resolve_device(opts.device)
    check_ops(opts.ops)
    plan = plan_for(device, opts.quick)
    name = opts.name or default_name(device)
    out = opts.out or PROFILES_DIR / f"{name}.json"
    store = PartialStore(partial_path(out), plan.fingerprint())
    if store.resumed and opts.progress:
        _say(f"resuming: {store.resumed} groups already measured in {store.path}")
    load_before = _load_average()
    skipped = run_compute(plan, store, opts)
    notes = [*opts.extra_notes, f"host load average (1 min) {load_before} before the "
             f"sweeps, {_load_average()} after: other work on the host skews timings"]
    if skipped:
        notes.append(f"time budget reached: {len(skipped)} compute groups not measured "
                     f"({', '.join(skipped[:4])}{', ...' if len(skipped) > 4 else ''})")
    if comm_ops(opts.ops):
        run_collectives(plan, store, opts)
    profile = build_profile(store.groups, device_info(device), plan, name, notes)
    if out.exists():
        carry_over(profile, read_profile_dict(out))
    # what neither this run nor the profile it replaces measured: datasheet fallbacks
    fill_unmeasured_links(profile, shipped_siblings(name, PROFILES_DIR))
    write_profile(profile, out)
    store.remove()
    return profile, out


def calibrate_and_summarize(opts: CalibrateOptions):
    """Run ``calibrate`` and describe the profile it wrote (the CLI prints this)."""
    profile, out = calibrate(opts)
    return profile_table(profile, f"wrote {out}")


def profile_table(profile: dict, title: str):
    """A rich table of what a profile holds: samples per op, peaks, collective fits."""
    from rich.table import Table

    table = Table(title=f"{profile['name']} ({profile['source']}): {title}")
    for col in ("section", "what", "value"):
        table.add_column(col)
    peaks = profile["peaks"]
    table.add_row("peaks", "copy (read+write)", f"{peaks['copy_bytes_per_s'] / 1e9:.1f} GB/s")
    for dtype, flops in peaks["matmul_flops_per_s"].items():
        table.add_row("peaks", f"matmul {dtype}", f"{flops / 1e12:.2f} TFLOP/s")
    for kind, section in profile["ops"].items():
        table.add_row("ops", kind, f"{len(section['samples'])} samples")
    for link, ops in profile["collectives"].items():
        for op, by_ranks in ops.items():
            for ranks, fit in by_ranks.items():
                table.add_row(f"{link} x{ranks}", op,
                              f"alpha {fit['alpha_s'] * 1e6:.1f} us, "
                              f"{fit['bytes_per_s'] / 1e9:.2f} GB/s, "
                              f"rms rel. error {fit['residual_rel']:.1%}")
    over = profile["overheads"]
    table.add_row("overheads", "step / per layer",
                  f"{over['step_s'] * 1e6:.1f} us / {over['per_layer_s'] * 1e6:.2f} us")
    return table
