"""The generation engine of one rank: build the stage, size the cache, serve requests.

`Engine.build` loads this rank's part of the model (seeded random or a checkpoint),
measures the workspace of the largest prefill step and sizes the paged KV cache from
what is left (the same page count on every rank). `Engine.serve` runs one workload:
the pipeline's driver (its last stage's leader) schedules and samples, every other rank
follows the plans it is sent (`twinfer.exec.control`). The engine can serve several
workloads in a row (the benchmark does), with the same weights and cache.
"""

from __future__ import annotations

import gc
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from math import ceil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from twinfer.exec.diag import phase, warn
from twinfer.exec.graphs import DecodeGraphs, buckets_up_to
from twinfer.exec.groups import Groups
from twinfer.exec.kv_cache import (
    CPU_BUDGET_BYTES,
    BlockAllocator,
    CacheShape,
    KVCache,
    blocks_for_budget,
    gpu_budget_bytes,
)
from twinfer.exec.layouts import stage_comm
from twinfer.exec.model import TORCH_DTYPES, Transformer
from twinfer.exec.runner import StageRunner
from twinfer.exec.scheduler import BatchingConfig, Scheduler, Sequence
from twinfer.exec.symm_allreduce import SymmAllReduce
from twinfer.exec.timing import StepTimer
from twinfer.exec.tp import TPComm, part_for, shard_state
from twinfer.exec.weights import CheckpointWeights, SeededWeights
from twinfer.spec import ModelSpec, PipelinePlan, SchedulerSpec, SpecError, StagePlan

if TYPE_CHECKING:
    from twinfer.exec.control import ControlPlane, LocalControl


@dataclass(frozen=True)
class EngineOptions:
    """How to build the engine (everything a scenario does not say)."""

    checkpoint: str | None = None  # HF safetensors directory; None: seeded random
    seed: int = 0
    cuda_graphs: bool = True  # decode steps on GPU replay captured graphs
    cpu_kv_budget_bytes: int = CPU_BUDGET_BYTES
    layout: object = None  # the scenario's layout: kv_sharded stages attend differently
    pool: object = None  # an FA Pool's PoolLink (twinfer.exec.fa_pool_exec), base ranks


@dataclass(frozen=True)
class ServeOptions:
    """How to serve one workload."""

    temperature: float = 0.0  # 0: greedy
    seed: int = 0
    wall_clock_arrivals: bool = True  # False: every request arrives at t=0
    on_token: Callable[[int, int], None] | None = None  # (rid, token), on the driver
    keep_logits: bool = False  # tests: keep every step's logits on the driver


@dataclass
class ServeReport:
    """What one rank saw of one workload (the driver's lists are the non-empty ones)."""

    rank: int
    timings: list[dict]
    steps: list[dict] = field(default_factory=list)
    requests: list[dict] = field(default_factory=list)
    outputs: dict[int, list[int]] = field(default_factory=dict)
    logits: dict[int, list[np.ndarray]] = field(default_factory=dict)
    cuda_graphs: bool = False
    kv_peak_pages: int = 0


TEST_BUDGET_ENV = "TWINFER_TEST_KV_BUDGET"  # "rank:bytes,...": a rank's KV budget (tests)


def test_budget(rank: int, budget: int) -> int:
    """``budget``, or what ``TWINFER_TEST_KV_BUDGET`` says for ``rank`` (tests simulate
    ranks with different free memory)."""
    import os

    for item in filter(None, os.environ.get(TEST_BUDGET_ENV, "").split(",")):
        r, value = item.split(":")
        if int(r) == rank:
            return int(value)
    return budget


def sample(logits: torch.Tensor, temperature: float, gen: torch.Generator | None) -> list[int]:
    """Greedy (temperature 0) or temperature sampling. logits: fp32 [batch, vocab]."""
    if temperature <= 0:
        return logits.argmax(dim=-1).tolist()
    probs = torch.softmax(logits / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=gen).squeeze(1).tolist()


class AllocatorCounters:
    """What the caching allocator did between two reads: ``cudaMalloc`` calls and
    out-of-memory retries (each a cache flush and a device sync). A step that needs new
    device memory pays for it in its own time; the results record it for prefill steps
    (docs/RESULTS.md), whose workspace is the largest. Empty on CPU."""

    KEYS = {"num_device_alloc": "device_allocs", "num_device_free": "device_frees",
            "num_alloc_retries": "alloc_retries"}

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.last = self._read()

    def _read(self) -> dict[str, int]:
        if self.device.type != "cuda":
            return {}
        stats = torch.cuda.memory_stats(self.device)
        return {name: int(stats.get(key, 0)) for key, name in self.KEYS.items()}

    def delta(self) -> dict[str, int]:
        now = self._read()
        out = {k: v - self.last.get(k, 0) for k, v in now.items()}
        self.last = now
        return out


class GcClock:
    """Python's garbage collections and the time they took, as deltas between reads
    (through ``gc.callbacks``). A full (generation 2) collection walks every object the
    process holds; with torch, Triton and a built model that is hundreds of thousands,
    tens to hundreds of milliseconds of the one host thread that launches the kernels
    (docs/VALIDATION.md). Results record it per step (``host.gc_s``)."""

    def __init__(self) -> None:
        self.seconds, self.collections, self.full = 0.0, 0, 0
        self._start: float | None = None
        self._last = (0.0, 0, 0)
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        elif self._start is not None:
            self.seconds += time.perf_counter() - self._start
            self.collections += 1
            self.full += info.get("generation") == 2
            self._start = None

    def delta(self) -> dict[str, float | int]:
        now = (self.seconds, self.collections, self.full)
        last, self._last = self._last, now
        return {"gc_s": now[0] - last[0], "gc_collections": now[1] - last[1],
                "gc_full": now[2] - last[2]}

    def close(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def __enter__(self) -> GcClock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class JitClock:
    """Triton kernel specializations compiled in this process (or loaded from Triton's
    disk cache: the first use of a specialization in a process either way), with the
    host time they took, as deltas between reads (through ``triton.knobs.runtime``'s
    ``jit_cache_hook``, called before such a compile, and ``jit_post_compile_hook``,
    after; hooks already set are kept and called). Triton compiles on the launching
    thread: a measured step that uses a specialization the warm-up did not spends the
    compiler's 0.1-1 s of host time in its launch. Results record it per step
    (``host.jit_s``, ``jit_compiles`` and, when any, ``jit_kernels``). Without Triton
    (or with a Triton lacking the hooks) the clock reads zero."""

    def __init__(self) -> None:
        self.seconds, self.kernels = 0.0, []
        self._start: float | None = None
        self._last = (0.0, 0)
        try:
            from triton import knobs

            self._runtime = knobs.runtime
            self._before_was = self._runtime.jit_cache_hook
            self._after_was = self._runtime.jit_post_compile_hook
        except (ImportError, AttributeError):
            self._runtime = None
            return
        self._runtime.jit_cache_hook = self._before
        self._runtime.jit_post_compile_hook = self._after

    def _before(self, *args: object, **kwargs: object) -> bool | None:
        self._start = time.perf_counter()
        # a true return tells Triton to skip the compile: only an earlier hook may say so
        return self._before_was(*args, **kwargs) if self._before_was else None

    def _after(self, *args: object, **kwargs: object) -> object:
        if self._start is not None:
            self.seconds += time.perf_counter() - self._start
            self._start = None
        fn = kwargs.get("fn")
        self.kernels.append(str(getattr(fn, "name", fn)))
        return self._after_was(*args, **kwargs) if self._after_was else None

    def delta(self) -> dict[str, object]:
        last, self._last = self._last, (self.seconds, len(self.kernels))
        out: dict[str, object] = {"jit_s": self.seconds - last[0],
                                  "jit_compiles": len(self.kernels) - last[1]}
        if out["jit_compiles"]:
            out["jit_kernels"] = self.kernels[last[1]:]
        return out

    def close(self) -> None:
        runtime, self._runtime = self._runtime, None
        if runtime is None:
            return
        if runtime.jit_cache_hook == self._before:
            runtime.jit_cache_hook = self._before_was
        if runtime.jit_post_compile_hook == self._after:
            runtime.jit_post_compile_hook = self._after_was

    def __enter__(self) -> JitClock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StealClock:
    """Time the hypervisor took from this rank's CPU (``/proc/stat``'s steal column, in
    clock ticks of 10 ms) as read around a step. On the device machines (KVM guests)
    a step's host part sometimes ran 2-10x slower with the thread's own CPU time
    keeping pace (docs/VALIDATION.md). A guest kernel that does not account steal time
    charges the time its vCPU was taken away to the thread that ran on it, so the
    thread's CPU time cannot rule that out; the steal column can. The CPU is the
    one the rank is bound to, or all of them (the ``cpu`` line) when it is not bound.
    Reads return None where ``/proc/stat`` is missing."""

    STAT = Path("/proc/stat")

    def __init__(self) -> None:
        cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
        self.line = f"cpu{next(iter(cpus))} " if len(cpus) == 1 else "cpu "
        self.tick_s = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01

    def read(self) -> float | None:
        """Seconds of steal so far on the clock's CPU(s), or None."""
        try:
            text = self.STAT.read_text()
        except OSError:
            return None
        for row in text.splitlines():
            if row.startswith(self.line):
                fields = row.split()
                return int(fields[8]) * self.tick_s if len(fields) > 8 else None
        return None


def settle_heap() -> None:
    """Collect everything, then move what survives to the permanent generation
    (``gc.freeze``): the modules, the model, compiled kernels and captured graphs are
    never walked again, so a measured step cannot pay a full collection over them. Done
    before every serve; what a serve creates dies young (vLLM freezes after its CUDA
    graph capture, for the same reason). On an H100 the first measured prefill of a
    fresh process took 141 ms of the host's CPU time against 12-13 ms in later
    processes (docs/VALIDATION.md)."""
    gc.collect()
    gc.freeze()


class Engine:
    def __init__(self, runner: StageRunner, control: ControlPlane | LocalControl,
                 sched: SchedulerSpec, opts: EngineOptions, num_blocks: int) -> None:
        self.runner, self.control, self.sched = runner, control, sched
        self.opts, self.num_blocks = opts, num_blocks
        self.info: dict = {}

    # ---- build ---------------------------------------------------------------------
    @classmethod
    def build(cls, spec: ModelSpec, groups: Groups, sched: SchedulerSpec,
              opts: EngineOptions, control: ControlPlane | LocalControl) -> Engine:
        device = control.device
        dtype = TORCH_DTYPES[spec.dtype]
        timer = StepTimer(device)
        part = part_for(spec, groups.stage, groups.tp_rank)
        t0 = time.perf_counter()
        source = (CheckpointWeights(opts.checkpoint, spec, device, dtype) if opts.checkpoint
                  else SeededWeights(spec, opts.seed, device, dtype))
        # collective: every rank of the TP group builds (or declines) it together
        tp_comm = TPComm(groups.tp, groups.tp_size, timer,
                         SymmAllReduce.maybe(groups.tp, device, dtype) if groups.tp_size > 1
                         else None)
        comm, cache_kv_heads = stage_comm(opts, spec, groups, tp_comm, control)
        model = Transformer(spec, part, comm, device)
        model.load(shard_state(spec, part, (groups.tp_rank, groups.tp_size), source))
        model.requires_grad_(False)
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        shape = CacheShape(part.layers, sched.kv_block_tokens, cache_kv_heads or part.kv_heads,
                           spec.head_dim, dtype)
        runner = StageRunner(model, None, groups, timer, device)
        phase(groups.rank, "memory probe")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            runner.probe(min(sched.max_prefill_tokens, spec.max_position))
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device)
            torch.cuda.empty_cache()
            budget, left = gpu_budget_bytes(device, sched.gpu_memory_utilization, peak)
        else:
            peak, budget, left = weight_bytes, opts.cpu_kv_budget_bytes, 0
        budget = test_budget(groups.rank, budget)
        mine = blocks_for_budget(shape, budget)
        # free memory differs between ranks (NCCL buffers, other processes): every rank
        # of the placement takes the smallest count, or their block tables would differ
        num_blocks = control.agree_min(mine)
        phase(groups.rank, f"KV pages: {mine} here, {num_blocks} agreed")
        if num_blocks < 1:
            raise SpecError("scheduler.gpu_memory_utilization", "no memory is left for the KV "
                            f"cache on rank {groups.rank} (weights and workspace take "
                            f"{peak / 2**30:.1f} GiB)", "raise it, or spread the model "
                            "over more GPUs")
        runner.cache = KVCache(shape, num_blocks, device)
        info = {
            "weight_bytes": weight_bytes, "load_s": time.perf_counter() - t0,
            "peak_before_kv_bytes": peak, "left_after_weights_workspace_bytes": left or None,
            "kv_bytes": runner.cache.nbytes, "kv_bytes_per_page": shape.bytes_per_page,
            "kv_fraction_of_left": (runner.cache.nbytes / left) if left else None,
            "layers": [part.layers.start, part.layers.stop],
            "tp_all_reduce": tp_comm.describe(),
            "heads": part.heads, "kv_heads": part.kv_heads, "ffn": part.ffn,
        }
        engine = cls(runner, control, sched, opts, num_blocks)
        engine.info = info
        return engine

    @classmethod
    def local(cls, spec: ModelSpec, sched: SchedulerSpec, opts: EngineOptions,
              device: torch.device) -> Engine:
        """The whole model on one device, in this process: no MPI, no torch.distributed
        (tests, and the benchmark's single-GPU runs)."""
        from twinfer.exec.control import LocalControl

        pipe = PipelinePlan((StagePlan((0,), 0, spec.layers),), 1)
        groups = Groups(rank=0, pipeline_index=0, stage_index=0, pipeline=pipe, tp=None,
                        to_prev=None, to_next=None)
        return cls.build(spec, groups, sched, opts, LocalControl(groups, device))

    # ---- serve ---------------------------------------------------------------------
    def batching(self, seqs: list[Sequence]) -> BatchingConfig:
        longest = max((len(s.prompt) + s.max_new for s in seqs), default=1)
        return BatchingConfig(
            max_running=self.sched.max_running, max_prefill_tokens=self.sched.max_prefill_tokens,
            page_size=self.sched.kv_block_tokens,
            micro_batches=self.runner.groups.pipeline.micro_batches,
            max_blocks=ceil(longest / self.sched.kv_block_tokens))

    @torch.inference_mode()
    def release_graphs(self) -> None:
        """Drop the captured decode graphs (they hold the TP group's NCCL kernels)."""
        self.runner.graphs = None

    def serve(self, seqs: list[Sequence], opts: ServeOptions) -> ServeReport:
        """Serve ``seqs`` (the same list on every rank of the pipeline; only the
        driver's copy is scheduled). Returns this rank's report."""
        cfg = self.batching(seqs)
        need = max((ceil((len(s.prompt) + s.max_new) / cfg.page_size) for s in seqs),
                   default=0)
        if need > self.num_blocks - max(1, self.num_blocks // 100):
            raise SpecError("workload", f"a request needs {need} KV pages of "
                            f"{cfg.page_size} tokens but the cache holds {self.num_blocks}",
                            "shorten prompts/outputs or give the KV cache more memory")
        rank = self.control.rank
        phase(rank, f"serve {len(seqs)} sequences: capture")
        graphed = self._capture(cfg, len(seqs))
        settle_heap()  # every rank: no full collection inside a measured step
        phase(rank, f"serve: barrier (graphs {graphed})")
        self.control.barrier()
        phase(rank, "serve: steps")
        first_record = len(self.runner.timer.flush())
        if self.control.is_driver:
            report = self._drive(seqs, cfg, opts)
        else:
            report = ServeReport(self.control.rank, [])
            while (plan := self.control.recv_plan()) is not None:
                self.runner.step(plan)
        phase(rank, "serve: finish")
        self.runner.finish()
        end_serve = getattr(self.runner.model.comm, "end_serve", None)  # an FA Pool's base
        if end_serve is not None:
            end_serve()
        if self.runner.device.type == "cuda":
            torch.cuda.synchronize(self.runner.device)
        report.timings = self.runner.timer.flush()[first_record:]
        report.cuda_graphs = graphed
        return report

    def _capture(self, cfg: BatchingConfig, num_seqs: int) -> bool:
        """Capture the decode graphs; True when every active rank replays them.

        Collective over every active rank (all pipelines): the same number of
        agreement rounds everywhere, whatever each rank's bucket list. Each round one
        bucket is captured, then the ranks agree; a rank whose capture fails stops
        every rank at the same round, so the warm-up collectives (real NCCL calls)
        stay the same sequence on every rank of a TP group.
        """
        self.runner.graphs = None
        rank, cuda = self.control.rank, self.runner.device.type == "cuda"
        want = cuda and self.opts.cuda_graphs and num_seqs > 0
        buckets = buckets_up_to(min(cfg.max_running, num_seqs)) if want else []
        rounds = -self.control.agree_min(-len(buckets))  # the most buckets of any rank
        if not rounds:
            return False
        graphs = None
        if buckets:
            graphs = DecodeGraphs(self.runner.model, self.runner.cache, cfg.max_blocks,
                                  buckets, self.runner.groups.is_first, self.runner.staging)
        if cuda:  # every earlier collective done everywhere before any rank captures
            torch.cuda.synchronize(self.runner.device)
        self.control.barrier()
        ok = 1
        for i in range(rounds):
            mine = 1
            if i < len(buckets):
                phase(rank, f"capture bucket {buckets[i]} of {buckets}")
                try:
                    graphs.capture_bucket(buckets[i])
                except RuntimeError as exc:
                    self.info["cuda_graph_error"] = f"{type(exc).__name__}: {exc}"[:300]
                    warn(rank, f"CUDA graph capture of bucket {buckets[i]} failed: {exc}")
                    mine = 0
            ok = self.control.agree_min(mine)
            if not ok:
                break
        if cuda:
            torch.cuda.synchronize(self.runner.device)
        phase(rank, f"capture done: {'graphs' if ok and buckets else 'eager'}")
        if ok and graphs is not None:  # every rank replays graphs or none does
            self.runner.graphs = graphs
            return True
        return False

    def _drive(self, seqs: list[Sequence], cfg: BatchingConfig,
               opts: ServeOptions) -> ServeReport:
        sched = Scheduler(seqs, cfg, BlockAllocator(self.num_blocks))
        gen = None
        if opts.temperature > 0:
            gen = torch.Generator(device=self.runner.device)
            gen.manual_seed(opts.seed)
        report = ServeReport(self.control.rank, [])
        inflight: deque = deque()
        allocator = AllocatorCounters(self.runner.device)
        steal = StealClock()
        with GcClock() as collector, JitClock() as compiler:
            t0 = time.perf_counter()
            while True:
                now = time.perf_counter() - t0 if opts.wall_clock_arrivals else float("inf")
                while len(inflight) < cfg.micro_batches:
                    t_plan = time.perf_counter()
                    plan = sched.next_plan(now)
                    if plan is None:
                        break
                    self.control.send_plan(plan)
                    t_sent = time.perf_counter()
                    inflight.append((plan, t_sent - t0, sched.kv_usage(), t_sent - t_plan))
                if not inflight:
                    if sched.done:
                        break
                    arrival = sched.next_arrival_s()
                    if arrival is None:
                        raise RuntimeError("scheduler stalled: requests wait but none can start")
                    time.sleep(max(0.0, arrival - (time.perf_counter() - t0)))
                    continue
                plan, start, (kv_tokens, kv_pages), plan_s = inflight.popleft()
                # prefill steps only: one read of /proc/stat inside the step, ~50 us
                steal0 = steal.read() if plan.phase == "prefill" else None
                t_step, c_step = time.perf_counter(), time.thread_time()
                logits = self.runner.step(plan)
                t_sample, c_sample = time.perf_counter(), time.thread_time()
                tokens = sample(logits, opts.temperature, gen)  # syncs: tokens to the host
                end = time.perf_counter() - t0
                sample_s = end + t0 - t_sample
                if opts.keep_logits:
                    for rid, row in zip(plan.rids, logits.cpu().numpy(), strict=True):
                        report.logits.setdefault(rid, []).append(row)
                sched.complete(plan, tokens, end)
                if opts.on_token is not None:
                    for rid, tok in zip(plan.rids, tokens, strict=True):
                        opts.on_token(rid, tok)
                report.steps.append({
                    "step": plan.step, "pipeline": self.runner.groups.pipeline_index,
                    "micro_batch": plan.group, "phase": plan.phase, "batch": plan.batch,
                    "tokens": plan.num_tokens, "context_tokens": plan.context_tokens,
                    "start_s": start, "wall_s": end - start,
                    "kv_pages_used": kv_pages, "kv_tokens": kv_tokens,
                    "host": {"plan_s": plan_s, "launch_s": t_sample - t_step,
                             "launch_cpu_s": c_sample - c_step,
                             "sample_s": sample_s,
                             "complete_s": time.perf_counter() - t0 - end,
                             **collector.delta(), **compiler.delta()},
                })
                if plan.phase == "prefill":
                    report.steps[-1]["allocator"] = allocator.delta()
                    steal1 = steal.read()
                    report.steps[-1]["host"]["steal_s"] = (
                        steal1 - steal0 if steal0 is not None and steal1 is not None
                        else None)
        self.control.send_plan(None)
        self.control.flush()
        report.kv_peak_pages = sched.alloc.peak_used
        for s in sorted(sched.finished, key=lambda s: s.rid):
            report.outputs[s.rid] = list(s.out)
            report.requests.append({
                "rid": s.rid, "pipeline": self.runner.groups.pipeline_index,
                "arrival_s": s.arrival_s, "prompt_tokens": len(s.prompt),
                "output_tokens": len(s.out), "token_s": s.token_s,
                "preemptions": s.preemptions,
            })
        return report
