"""GPU benchmark of the executor: TTFT and TPOT against the roofline and HF transformers.

Usage (on the device machine, from a checkout with ``PYTHONPATH=.``)::

    python -m twinfer.exec.bench --part ours   # one GPU, Llama-3-8B bf16 random weights
    python -m twinfer.exec.bench --part hf     # transformers generate, same GPU and shapes
    python -m twinfer.exec.bench --part multi  # TP=2 and PP=2 via mpirun (2 GPUs visible)
    python -m twinfer.exec.bench --part all    # the three in one process tree

Each part appends its rows to ``--out`` (JSON, written atomically) and prints a table.
For every (batch, context) pair - batch 1/16/64, context 512 and 4K by default -
``batch`` requests of ``context`` prompt tokens arrive together and generate
``--output-tokens`` tokens each. Reported per row:

- ``ttft_s``: mean time to first token (includes queueing behind the other prompts'
  prefill steps at large batch);
- ``tpot_s``: mean per-request time per output token, as the results JSON defines it;
- ``steady_tpot_s``: median gap between consecutive tokens once every prompt is
  prefilled (pure decode at the full batch; what the roofline bounds);
- ``roofline_tpot_s``: (weight bytes + KV bytes read per decode step) / measured
  copy bandwidth, per GPU (bytes divided by the TP degree); the bandwidth is that of a
  device-to-device copy measured in the same run (bytes read + bytes written per second).

transformers rows: ``LlamaForCausalLM(config)`` with random bf16 weights, ``generate``
greedy with a static cache when available (``torch.compile`` off by default:
``--hf-compile`` turns it on), TTFT = one-token generate, TPOT = (N-token generate -
one-token generate) / (N - 1).

Nothing here imports `twinfer.sim`; the spec package (pydantic) is needed.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from twinfer.spec import Request, Scenario, SchedulerSpec, model_preset, scenario_from_dict
from twinfer.spec.io import write_json_atomic

LAYOUTS = {"tp2": {"kind": "uniform", "tp": 2}, "pp2": {"kind": "uniform", "pp": 2}}


@dataclass(frozen=True)
class BenchConfig:
    model: str = "llama-3-8b"
    dtype: str = "bf16"
    batches: tuple[int, ...] = (1, 16, 64)
    contexts: tuple[int, ...] = (512, 4096)
    output_tokens: int = 32
    device: str = "cuda"
    out: str = "bench-exec.json"
    # of the whole GPU, for weights + workspace + KV pool: 0.94 leaves ~5 GB of an 80 GB
    # GPU for CUDA graphs, NCCL and fragmentation, and gives the pool >= 90% of what the
    # weights and the largest step leave (at 0.9 it would get about 87%)
    memory_utilization: float = 0.94
    hf_compile: bool = False
    layouts: tuple[str, ...] = ("tp2", "pp2")
    cuda_graphs: bool = True

    def spec(self):
        return model_preset(self.model, dtype=self.dtype)

    def requests(self, batch: int, context: int) -> list[Request]:
        return [Request(i, 0.0, context, self.output_tokens) for i in range(batch)]

    def mean_context(self, context: int) -> float:
        """A sequence's mean context over its decode steps."""
        return context + self.output_tokens / 2


@dataclass
class Row:
    system: str  # twinfer | transformers
    layout: str  # tp1 | tp2 | pp2
    batch: int
    context: int
    ttft_s: float | None = None
    tpot_s: float | None = None
    steady_tpot_s: float | None = None
    roofline_tpot_s: float | None = None
    tps: float | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)


# ---- measurements ---------------------------------------------------------------------
def copy_bandwidth(device: torch.device, nbytes: int = 1 << 30, reps: int = 20) -> float:
    """Device-to-device copy: (bytes read + bytes written) per second."""
    if device.type != "cuda":
        src = torch.empty(nbytes // 8, dtype=torch.uint8)
        dst = torch.empty_like(src)
        start = time.perf_counter()
        for _ in range(reps):
            dst.copy_(src)
        return 2 * src.numel() * reps / (time.perf_counter() - start)
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(reps):
        dst.copy_(src)
    end.record()
    end.synchronize()
    seconds = begin.elapsed_time(end) / 1e3
    del src, dst
    torch.cuda.empty_cache()
    return 2 * nbytes * reps / seconds


def roofline_tpot_s(spec, batch: int, mean_context: float, bw: float, tp: int = 1) -> float:
    """Bytes one decode step must read (all weights, every sequence's KV at its mean
    context over the decode) over the copy bandwidth, per GPU of a TP group."""
    step_bytes = spec.weight_bytes + batch * mean_context * spec.kv_bytes_per_token
    return step_bytes / tp / bw


def metrics(requests: list[dict], steps: list[dict]) -> dict:
    """TTFT, TPOT, steady TPOT and TPS from drivers' raw request records (token_s)."""
    ttft = [r["token_s"][0] - r["arrival_s"] for r in requests]
    tpot = [(r["token_s"][-1] - r["token_s"][0]) / (len(r["token_s"]) - 1)
            for r in requests if len(r["token_s"]) > 1]
    prefill_end = max((s["start_s"] + s["wall_s"] for s in steps if s["phase"] == "prefill"),
                      default=0.0)
    gaps = [b - a for r in requests
            for a, b in zip(r["token_s"][:-1], r["token_s"][1:], strict=True)
            if a >= prefill_end - 1e-9]
    end = max(r["token_s"][-1] for r in requests)
    tokens = sum(len(r["token_s"]) for r in requests)
    return {"ttft_s": statistics.fmean(ttft), "tpot_s": statistics.fmean(tpot) if tpot else None,
            "steady_tpot_s": statistics.median(gaps) if gaps else None,
            "tps": tokens / end if end > 0 else None}


# ---- the executor, one GPU in this process ---------------------------------------------
def run_ours(cfg: BenchConfig, bw: float) -> list[Row]:
    from twinfer.exec.engine import Engine, EngineOptions, ServeOptions
    from twinfer.exec.text import sequences

    spec, device = cfg.spec(), torch.device(cfg.device)
    sched = SchedulerSpec(gpu_memory_utilization=cfg.memory_utilization)
    engine = Engine.local(spec, sched, EngineOptions(cuda_graphs=cfg.cuda_graphs), device)
    warm = ServeOptions(wall_clock_arrivals=False)
    engine.serve(sequences([Request(0, 0.0, 16, 4)], spec.vocab, 0), warm)  # compile kernels
    rows = []
    for context in cfg.contexts:
        for batch in cfg.batches:
            row = Row("twinfer", "tp1", batch, context,
                      roofline_tpot_s=roofline_tpot_s(spec, batch, cfg.mean_context(context), bw))
            try:  # first a prompt of this length alone: kernels compiled for its shapes
                engine.serve(sequences([Request(0, 0.0, context, 2)], spec.vocab, 1), warm)
                report = engine.serve(sequences(cfg.requests(batch, context), spec.vocab, 0),
                                      warm)
                for key, value in metrics(report.requests, report.steps).items():
                    setattr(row, key, value)
                row.extra = {"cuda_graphs": report.cuda_graphs,
                             "prefill_steps": sum(s["phase"] == "prefill" for s in report.steps)}
            except torch.cuda.OutOfMemoryError as exc:
                row.note = f"OOM: {str(exc)[:120]}"
            rows.append(row)
            print_rows([row])
    info = dict(engine.info, num_blocks=engine.num_blocks)
    for row in rows:
        row.extra["engine"] = info
    del engine
    _free()
    return rows


# ---- Hugging Face transformers, same GPU ---------------------------------------------
def hf_model(spec, device: torch.device):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=spec.vocab, hidden_size=spec.hidden, intermediate_size=spec.ffn_hidden,
        num_hidden_layers=spec.layers, num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads, head_dim=spec.head_dim,
        max_position_embeddings=spec.max_position, rope_theta=spec.rope_theta,
        rms_norm_eps=spec.norm_eps, tie_word_embeddings=spec.tie_embeddings,
        attn_implementation="sdpa")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[spec.dtype]
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build straight in bf16: no fp32 copy of 8B weights
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def _hf_generate(model, ids: torch.Tensor, new_tokens: int,
                 cfg: BenchConfig) -> tuple[float, bool]:
    """Seconds for one ``generate`` call, and whether it used the static cache."""
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                  pad_token_id=0, cache_implementation="static")
    if not cfg.hf_compile:
        kwargs["disable_compile"] = True
    static = True
    _sync(ids.device)
    start = time.perf_counter()
    with torch.inference_mode():
        try:
            model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
        except (TypeError, ValueError):  # an older transformers: no static cache switch
            kwargs.pop("cache_implementation")
            kwargs.pop("disable_compile", None)
            static = False
            start = time.perf_counter()
            model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
    _sync(ids.device)
    return time.perf_counter() - start, static


def run_hf(cfg: BenchConfig, bw: float) -> list[Row]:
    spec, device = cfg.spec(), torch.device(cfg.device)
    model = hf_model(spec, device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    _hf_generate(model, torch.randint(0, spec.vocab, (1, 16), generator=gen).to(device), 4, cfg)
    rows = []
    for context in cfg.contexts:
        for batch in cfg.batches:
            row = Row("transformers", "tp1", batch, context,
                      roofline_tpot_s=roofline_tpot_s(spec, batch, cfg.mean_context(context), bw),
                      extra={"compile": cfg.hf_compile})
            ids = torch.randint(0, spec.vocab, (batch, context), generator=gen).to(device)
            try:
                _hf_generate(model, ids[:1], 2, cfg)  # warm, like ours: one prompt this long
                first, _ = _hf_generate(model, ids, 1, cfg)
                full, static = _hf_generate(model, ids, cfg.output_tokens, cfg)
                row.extra["static_cache"] = static
                row.ttft_s = first
                row.tpot_s = row.steady_tpot_s = (full - first) / (cfg.output_tokens - 1)
                row.tps = batch * cfg.output_tokens / full
            except torch.cuda.OutOfMemoryError as exc:
                row.note = f"OOM: {str(exc)[:120]}"
            del ids
            _free()
            rows.append(row)
            print_rows([row])
    del model
    _free()
    return rows


# ---- several GPUs: this module under mpirun --------------------------------------------
def bench_scenario(cfg: BenchConfig, layout: str, gpus: int) -> Scenario:
    gpu = torch.cuda.get_device_name().lower().replace(" ", "-") if cfg.device == "cuda" else "cpu"
    return scenario_from_dict({
        "name": f"bench-{layout}", "model": {"preset": cfg.model, "dtype": cfg.dtype},
        "cluster": {"nodes": [{"name": "node0", "gpu": gpu, "count": gpus}]},
        "layout": LAYOUTS[layout],
        "workload": {"requests": 1, "prompt_tokens": 16, "output_tokens": 4},
        "scheduler": {"gpu_memory_utilization": cfg.memory_utilization},
    })


def run_rank(cfg: BenchConfig, layout: str, bw: float) -> list[Row]:
    """One rank of a multi-GPU layout (inside mpirun); rank 0 returns the rows."""
    from mpi4py import MPI

    from twinfer.exec.engine import ServeOptions
    from twinfer.exec.launch import ExecArgs
    from twinfer.exec.rank import open_session

    world = MPI.COMM_WORLD
    scenario = bench_scenario(cfg, layout, world.Get_size())
    args = ExecArgs(scenario=scenario.name, device=cfg.device, cuda_graphs=cfg.cuda_graphs)
    session = open_session(args, world, scenario)
    tp = scenario.layout.tp
    rows = []
    for context in cfg.contexts:
        for batch in cfg.batches:
            # warm, as the one-GPU part: one prompt of this length alone first
            warm = session.sequences([Request(0, 0.0, context, 2)])
            session.collect(session.serve(warm, ServeOptions(wall_clock_arrivals=False)))
            seqs = session.sequences(cfg.requests(batch, context))
            report = session.serve(seqs, ServeOptions(wall_clock_arrivals=False))
            doc = session.collect(report)
            if doc is None:
                continue
            drivers = [r for r in session.reports if r is not None and r.requests]
            row = Row("twinfer", layout, batch, context,
                      roofline_tpot_s=roofline_tpot_s(scenario.model, batch,
                                                      cfg.mean_context(context), bw, tp),
                      extra={"cuda_graphs": doc["summary"]["cuda_graphs"]})
            m = metrics([q for r in drivers for q in r.requests],
                        [s for r in drivers for s in r.steps])
            for key, value in m.items():
                setattr(row, key, value)
            rows.append(row)
            print_rows([row])
    session.close()
    return rows


def launch_multi(cfg: BenchConfig) -> int:
    """Run each multi-GPU layout under mpiexec (2 ranks), appending to ``cfg.out``."""
    from twinfer.exec.launch import find_mpiexec, mpiexec_command, rank_env

    mpiexec = find_mpiexec()
    if mpiexec is None:
        print("multi: no mpiexec/mpirun found; skipped", file=sys.stderr)
        return 1
    code = 0
    for layout in cfg.layouts:
        argv = ["--part", "rank", "--rank-layout", layout, *cli_args(cfg)]
        env = rank_env(2, cfg.device)
        code |= subprocess.run(mpiexec_command(mpiexec, 2, argv, env, "twinfer.exec.bench"),
                               env=env).returncode
    return code


# ---- output ---------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def print_rows(rows: list[Row]) -> None:
    def ms(x: float | None) -> str:
        return f"{x * 1e3:9.2f}" if x is not None else "        -"

    for r in rows:
        ratio = (f"{r.steady_tpot_s / r.roofline_tpot_s:5.2f}x"
                 if r.steady_tpot_s and r.roofline_tpot_s else "    -")
        print(f"{r.system:12s} {r.layout:4s} b={r.batch:<3d} ctx={r.context:<5d} "
              f"TTFT {ms(r.ttft_s)} ms  TPOT {ms(r.tpot_s)} ms  steady {ms(r.steady_tpot_s)} ms"
              f"  roofline {ms(r.roofline_tpot_s)} ms ({ratio})  {r.note}", flush=True)


def append_rows(path: str, rows: list[Row], header: dict) -> None:
    doc = json.loads(Path(path).read_text()) if Path(path).exists() else {"rows": []}
    doc.update(header)
    doc["rows"] += [asdict(r) for r in rows]
    write_json_atomic(path, doc)


def header(cfg: BenchConfig, bw: float) -> dict:
    from twinfer.exec.report import versions

    device = torch.cuda.get_device_name() if cfg.device == "cuda" else "cpu"
    return {"schema": "twinfer.exec.bench/1", "config": asdict(cfg), "device": device,
            "gpus_visible": torch.cuda.device_count(), "copy_bw_bytes_per_s": bw,
            "versions": versions(), "created_unix_s": time.time()}


def cli_args(cfg: BenchConfig) -> list[str]:
    return ["--model", cfg.model, "--dtype", cfg.dtype, "--batches", *map(str, cfg.batches),
            "--contexts", *map(str, cfg.contexts), "--output-tokens", str(cfg.output_tokens),
            "--device", cfg.device, "--out", cfg.out,
            "--memory-utilization", str(cfg.memory_utilization)] + (
        [] if cfg.cuda_graphs else ["--no-cuda-graphs"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m twinfer.exec.bench", description=__doc__.split(
        "\n")[0])
    p.add_argument("--part", choices=["ours", "hf", "multi", "all", "rank"], default="all")
    p.add_argument("--model", default="llama-3-8b")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--contexts", type=int, nargs="+", default=[512, 4096])
    p.add_argument("--output-tokens", type=int, default=32)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="bench-exec.json")
    p.add_argument("--memory-utilization", type=float, default=0.94)
    p.add_argument("--hf-compile", action="store_true")
    p.add_argument("--layouts", nargs="+", default=["tp2", "pp2"], choices=list(LAYOUTS))
    p.add_argument("--rank-layout", default="tp2", help=argparse.SUPPRESS)
    p.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false")
    ns = p.parse_args(argv)
    cfg = BenchConfig(model=ns.model, dtype=ns.dtype, batches=tuple(ns.batches),
                      contexts=tuple(ns.contexts), output_tokens=ns.output_tokens,
                      device=ns.device, out=ns.out, memory_utilization=ns.memory_utilization,
                      hf_compile=ns.hf_compile, layouts=tuple(ns.layouts),
                      cuda_graphs=ns.cuda_graphs)
    if ns.part == "rank":
        from mpi4py import MPI

        rank = MPI.COMM_WORLD.Get_rank()
        if cfg.device == "cuda":
            torch.cuda.set_device(rank % torch.cuda.device_count())
        bw = copy_bandwidth(torch.device(cfg.device))
        rows = run_rank(cfg, ns.rank_layout, bw)
        if rank == 0:
            append_rows(cfg.out, rows, header(cfg, bw))
        return 0
    bw = copy_bandwidth(torch.device(cfg.device))
    print(f"copy bandwidth {bw / 1e9:.0f} GB/s (read + write)", flush=True)
    code = 0
    if ns.part in ("ours", "all"):
        append_rows(cfg.out, run_ours(cfg, bw), header(cfg, bw))
    if ns.part in ("hf", "all"):
        append_rows(cfg.out, run_hf(cfg, bw), header(cfg, bw))
    if ns.part in ("multi", "all"):
        gpus = torch.cuda.device_count() if cfg.device == "cuda" else 2
        if gpus >= 2:
            code = launch_multi(cfg)
        else:
            print(f"multi: {gpus} GPU(s) visible, TP=2 / PP=2 need 2; skipped")
    print(f"wrote {cfg.out}")
    return code


if __name__ == "__main__":
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    sys.exit(main())
