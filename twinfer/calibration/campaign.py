"""The validation campaign: calibrate, fit overheads, run the matrix, tabulate the errors.

``python -m twinfer.calibration.campaign --out OUT`` on the device machine (from a
checkout with ``PYTHONPATH=.``; needs torch, triton, mpi4py, numpy, pydantic, simpy,
pyyaml; rich is optional):

1. **calibrate** the visible device (collectives when two or more GPUs are visible)
   into ``OUT/profiles/<name>.json`` and ``OUT/plots/<name>.png`` (resumable);
2. **overheads**: short TP=1 executor runs of the model with a quarter and all of its
   layers (4 requests of 256 tokens) and one with a quarter of its layers and 32
   requests; with two GPUs a TP=2 run (with ``tp2`` in ``--layouts``) and PP=2 runs
   with 4 and 32 requests (with ``pp2``); on GPUs the same model once more at TP=1
   (and TP=2) without CUDA graphs (``OUT/overheads/``).
   Their step timelines fit ``overheads.step_s``, ``per_layer_s``,
   ``follower_step_s`` and the eager steps' host floor (``eager_layer_s``,
   ``eager_tp_layer_s``) into the profile (``calibrate --from-exec``) - runs outside
   the validation matrix, so the matrix is not fitted to itself;
3. **matrix**: {TP=1, TP=2, PP=2 where the GPUs allow} x batch {1, 16, 64} x context
   {512, 4K, 32K} with random bf16 weights, ``--output-tokens`` each, every request
   arriving at once; a point whose KV cache the twin's memory plan cannot hold for
   the whole batch at once is skipped and said so. Results go to
   ``OUT/results/<name>/<layout>_b<batch>_c<context>.json``;
4. ``OUT/validation_table.md``: the Markdown matrix (``twinfer compare --table``).

Every stage skips what OUT already holds, and no executor run starts past
``--time-budget-s``, so the campaign can be run again to finish what a time-boxed run
left. On CPU (``--device cpu``) the same steps run on the tiny model with two ranks.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from twinfer.exec.launch import repo_pythonpath

LAYOUTS = {"tp1": (1, 1), "tp2": (2, 1), "pp2": (1, 2)}
RUN_ESTIMATE_S = 90.0  # assumed length of an executor run until one has been timed


@dataclass(frozen=True)
class CampaignConfig:
    out: Path
    device: str  # "cuda" or "cpu"
    model: str
    layouts: tuple[str, ...]
    batches: tuple[int, ...]
    contexts: tuple[int, ...]
    output_tokens: int
    stages: tuple[str, ...]
    time_budget_s: float
    calibrate_budget_s: float
    quick: bool
    run_timeout_s: float = 300.0  # one executor run (a hung run is killed after this)


def _say(text: str) -> None:
    print(f"[campaign] {text}", file=sys.stderr, flush=True)


def matrix_scenario(cfg: CampaignConfig, profile: str, link: str, point: tuple) -> dict:
    """The scenario of one matrix point (or overhead run): ``point`` is
    (layout, batch, context, layers or 0 for the model's own)."""
    from twinfer.spec import model_preset

    layout, batch, context, layers = point
    tp, pp = LAYOUTS[layout]
    base = model_preset(cfg.model)
    model: dict = {"preset": cfg.model}
    if context + cfg.output_tokens > base.max_position:
        model["max_position"] = context + cfg.output_tokens
    if layers:
        model["layers"] = layers
    return {
        "name": f"{cfg.model}_{layout}_b{batch}_c{context}" + (f"_L{layers}" if layers else ""),
        "description": f"twinfer validation campaign on {profile}",
        "model": model,
        "cluster": {"nodes": [{"name": "node0", "gpu": profile, "count": tp * pp,
                               "intra_link": link}]},
        "layout": {"kind": "uniform", "tp": tp, "pp": pp},
        "workload": {"requests": batch, "prompt_tokens": context,
                     "output_tokens": cfg.output_tokens, "arrival": {"kind": "batch"},
                     "seed": 0},
        # an overhead run prefills one prompt per step: as many prefill steps as
        # prompts to fit the prefill's host terms with
        "scheduler": {"max_running": max(256, batch),
                      "max_prefill_tokens": context if layers else max(8192, context)},
    }


def kv_fits(doc: dict, profile_path: Path) -> str:
    """'' if the twin's memory plan holds the whole batch's KV at once, else why not."""
    from twinfer.sim.twin import build_twin
    from twinfer.spec import SpecError, scenario_from_dict

    try:
        scenario = scenario_from_dict(doc)
        twin = build_twin(scenario, str(profile_path))
    except SpecError as exc:
        return str(exc)
    need = doc["workload"]["requests"] * (doc["workload"]["prompt_tokens"]
                                          + doc["workload"]["output_tokens"])
    have = min(g.kv_tokens for m in twin.memory for g in m.gpus)
    return "" if have >= need else f"KV for {need} tokens, the cache holds {have}"


def run_exec(scenario: Path, out: Path, device: str, timeout_s: float,
             extra: tuple[str, ...] = ()) -> tuple[int, str]:
    """``python -m twinfer.exec`` (which starts mpiexec); returns (exit code, output tail)."""
    env = {**os.environ, "PYTHONPATH": repo_pythonpath()}
    if device == "cpu":
        env["OMP_NUM_THREADS"] = "1"  # as calibrated: one thread per rank
    argv = [sys.executable, "-m", "twinfer.exec", str(scenario), "--device", device,
            "--arrivals", "batch", "--out", str(out), *extra]
    # its own process group, so that a run past its time goes with mpirun and the ranks
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=max(30.0, timeout_s))
    except subprocess.TimeoutExpired:
        for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, None)):
            try:
                os.killpg(proc.pid, sig)
                proc.communicate(timeout=wait_s)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        return 124, f"timed out after {timeout_s:.0f} s"
    return proc.returncode, "\n".join(output.strip().splitlines()[-6:])


class Runner:
    """Executor runs against one deadline, each timed so the next can be budgeted."""

    def __init__(self, cfg: CampaignConfig, start_s: float) -> None:
        self.cfg, self.deadline = cfg, start_s + cfg.time_budget_s
        self.timed_s: list[float] = []
        self.log: list[dict] = []

    def run(self, doc: dict, out: Path, extra: tuple[str, ...] = ()) -> bool:
        """Run one scenario unless its results exist or time is short; True if they exist."""
        if out.exists():
            self.log.append({"name": doc["name"], "status": "kept"})
            return True
        left = self.deadline - time.monotonic()
        if left < (max(self.timed_s) if self.timed_s else RUN_ESTIMATE_S):
            self.log.append({"name": doc["name"], "status": "skipped: time budget"})
            return False
        scen = out.with_suffix(".yaml")
        scen.parent.mkdir(parents=True, exist_ok=True)
        scen.write_text(json.dumps(doc, indent=1))  # JSON is YAML: no yaml dump needed
        _say(f"exec {doc['name']} ({left:.0f} s left)")
        t0 = time.monotonic()
        code, tail = run_exec(scen, out, self.cfg.device, min(left, self.cfg.run_timeout_s),
                              extra)
        took = time.monotonic() - t0
        if code == 0:  # a hung run that timed out says nothing of the next one's length
            self.timed_s.append(took)
        self.log.append({"name": doc["name"], "status": "ok" if code == 0 else f"exit {code}",
                         "wall_s": round(took, 1), **({"tail": tail} if code else {})})
        if code:
            _say(f"  failed (exit {code}): {tail}")
        return code == 0 and out.exists()


def stage_calibrate(cfg: CampaignConfig) -> tuple[Path, str, str]:
    """(profile path, profile name, link kind) - calibrating unless it exists."""
    from twinfer.calibration.calibrate import CalibrateOptions, calibrate, comm_ranks
    from twinfer.calibration.device import default_name, link_kind
    from twinfer.calibration.plot import plot_profile
    from twinfer.spec import SpecError

    name = default_name(cfg.device)
    path = cfg.out / "profiles" / f"{name}.json"
    ranks = comm_ranks(cfg.device, 0)
    link = link_kind(cfg.device, ranks)
    if "calibrate" in cfg.stages and not path.exists():
        _say(f"calibrate {cfg.device} -> {path}")
        opts = CalibrateOptions(out=path, device=cfg.device, quick=cfg.quick,
                                time_budget_s=cfg.calibrate_budget_s)
        try:
            profile, _ = calibrate(opts)
        except SpecError as exc:  # collectives failed: keep the compute sweeps (resumed)
            if exc.field != "collectives":
                raise
            _say(f"collectives failed, profile without them: {exc}")
            profile, _ = calibrate(replace(opts, ops=tuple(o for o in opts.ops
                                                           if o != "collectives"),
                                           extra_notes=[f"collectives not measured: {exc}"]))
        try:
            plot_profile(profile, cfg.out / "plots" / f"{name}.png")
        except ImportError as exc:  # the device image may lack matplotlib: plot later
            _say(f"no plot ({exc}); later: python -m twinfer.calibration.plot {path}")
    if not path.exists():
        raise SystemExit(f"no profile at {path}: run the calibrate stage first")
    return path, name, link


def stage_overheads(cfg: CampaignConfig, runner: Runner, profile: tuple) -> None:
    from twinfer.calibration.overheads import fit_overheads_into
    from twinfer.spec import model_preset

    path, name, link = profile
    layers = model_preset(cfg.model).layers
    quarter = max(1, layers // 4)
    # (layout, batch, layers, eager)
    runs = [("tp1", 4, count, False) for count in sorted({quarter, layers})]
    runs.append(("tp1", 32, quarter, False))  # the host's time per sequence of a step
    gpus = _device_count(cfg.device)
    tp2 = "tp2" in cfg.layouts and gpus >= 2
    if tp2:
        runs.append(("tp2", 4, layers, False))  # a driver with a follower: follower_step_s
    if "pp2" in cfg.layouts and gpus >= 2:  # the host's share of a pipelined step
        runs += [("pp2", 4, layers, False), ("pp2", 32, layers, False)]
    if cfg.device == "cuda":  # eager steps' host floor: eager_layer_s, eager_tp_layer_s
        runs += [("tp1", 4, layers, True)] + ([("tp2", 4, layers, True)] if tp2 else [])
    results = []
    for layout, batch, count, eager in runs:
        doc = matrix_scenario(cfg, name, link, (layout, batch, 256, count))
        out = cfg.out / "overheads" / f"{doc['name']}{'_eager' if eager else ''}.json"
        if runner.run(doc, out, ("--no-cuda-graphs",) if eager else ()):
            results.append(out)
    if results:
        fit, _ = fit_overheads_into(results, path)
        _say(fit.note([p.name for p in results]))


def stage_matrix(cfg: CampaignConfig, runner: Runner, profile: tuple) -> None:
    """The matrix, cheapest points first (short contexts, small batches, every layout),
    so that a time-boxed run covers every layout before the long contexts."""
    path, name, link = profile
    gpus = _device_count(cfg.device)
    layouts = [x for x in cfg.layouts if LAYOUTS[x][0] * LAYOUTS[x][1] <= gpus]
    for layout in sorted(set(cfg.layouts) - set(layouts)):
        runner.log.append({"name": layout, "status": f"skipped: needs more than {gpus} GPUs"})
    for context in cfg.contexts:
        for batch in cfg.batches:
            for layout in layouts:
                doc = matrix_scenario(cfg, name, link, (layout, batch, context, 0))
                out = cfg.out / "results" / name / f"{layout}_b{batch}_c{context}.json"
                why = "" if out.exists() else kv_fits(doc, path)
                if why:
                    runner.log.append({"name": doc["name"], "status": f"skipped: {why}"})
                    continue
                runner.run(doc, out)


def _device_count(device: str) -> int:
    if device == "cpu":
        return 2
    import torch

    return torch.cuda.device_count()


def write_table(cfg: CampaignConfig, profile_path: Path) -> None:
    from twinfer.compare import validation_table

    results = cfg.out / "results"
    if results.is_dir() and any(results.rglob("*.json")):
        table = validation_table([results], profile_path)
        (cfg.out / "validation_table.md").write_text(table + "\n")
        print(table)


def parse_args(argv: list[str] | None = None) -> CampaignConfig:
    p = argparse.ArgumentParser(prog="python -m twinfer.calibration.campaign",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--model", default="", help="default llama-3-8b (CPU: tiny)")
    p.add_argument("--layouts", default="tp1,tp2,pp2")
    p.add_argument("--batches", default="", help="default 1,16,64 (CPU: 1,4)")
    p.add_argument("--contexts", default="", help="default 512,4096,32768 (CPU: 64,256)")
    p.add_argument("--output-tokens", type=int, default=0, help="default 32 (CPU: 16)")
    p.add_argument("--stages", default="calibrate,overheads,matrix")
    p.add_argument("--time-budget-s", type=float, default=540.0,
                   help="start no executor run after this many seconds")
    p.add_argument("--calibrate-budget-s", type=float, default=240.0,
                   help="stop the compute sweeps after this long (collectives follow)")
    p.add_argument("--run-timeout-s", type=float, default=300.0,
                   help="kill one executor run after this long (a hang costs no more)")
    p.add_argument("--quick", action="store_true", help="quick calibration plan")
    ns = p.parse_args(argv)
    device = ns.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = device == "cuda"
    return CampaignConfig(
        out=ns.out, device=device, model=ns.model or ("llama-3-8b" if gpu else "tiny"),
        layouts=tuple(x for x in ns.layouts.split(",") if x),
        batches=tuple(int(x) for x in (ns.batches or ("1,16,64" if gpu else "1,4")).split(",")
                      if x),
        contexts=tuple(int(x) for x in (ns.contexts or ("512,4096,32768" if gpu else "64,256"))
                       .split(",") if x),
        output_tokens=ns.output_tokens or (32 if gpu else 16),
        stages=tuple(x for x in ns.stages.split(",") if x), time_budget_s=ns.time_budget_s,
        calibrate_budget_s=ns.calibrate_budget_s, quick=ns.quick,
        run_timeout_s=ns.run_timeout_s)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    bad = [x for x in cfg.layouts if x not in LAYOUTS]
    if bad:
        print(f"error: --layouts: unknown {bad[0]!r} (use {', '.join(LAYOUTS)})", file=sys.stderr)
        return 2
    start = time.monotonic()
    cfg.out.mkdir(parents=True, exist_ok=True)
    profile = stage_calibrate(cfg)
    runner = Runner(cfg, start)
    if "overheads" in cfg.stages:
        stage_overheads(cfg, runner, profile)
    if "matrix" in cfg.stages:
        stage_matrix(cfg, runner, profile)
    write_table(cfg, profile[0])
    log_path = cfg.out / "campaign.json"
    log_path.write_text(json.dumps({"config": {k: str(v) for k, v in cfg.__dict__.items()},
                                    "wall_s": round(time.monotonic() - start, 1),
                                    "runs": runner.log}, indent=1))
    for entry in runner.log:
        _say(f"{entry['name']}: {entry['status']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
