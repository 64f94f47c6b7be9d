"""The life of one MPI rank: configuration, groups, engine, serve, results, or abort.

Order matters for the fault guarantees (`twinfer.exec.launch`): rank 0 loads and checks
everything it can (scenario, rank count, checkpoint shapes, prompt) before any rank
touches a GPU, and broadcasts it; any exception anywhere prints ``rank R failed: ...``
and aborts the whole job.

`open_session` / `Session.serve` / `Session.collect` are also the benchmark's entry
points (one engine, several workloads).
"""

from __future__ import annotations

import gc
import os
import sys
import traceback
from dataclasses import dataclass, field
from datetime import timedelta
from math import ceil

from twinfer.exec.diag import arm_stack_dump, op_profile, phase, warn
from twinfer.exec.launch import ExecArgs, rendezvous_address
from twinfer.exec.scheduler import Sequence
from twinfer.spec import Request, Scenario, SpecError, load_scenario, scenario_from_dict


@dataclass
class RunConfig:
    """What rank 0 decided, broadcast to every rank (plain data)."""

    scenario: dict
    base_dir: str
    requests: list[Request]
    prompt_ids: list[int] | None  # --prompt, tokenized

    def load(self) -> Scenario:
        return scenario_from_dict(self.scenario, base_dir=self.base_dir or None)


def rank_main(args: ExecArgs) -> int:
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    rank = world.Get_rank()
    arm_stack_dump()
    try:
        session = open_session(args, world)
        phase(rank, "serve")
        with op_profile(rank):
            report = session.serve(session.sequences(), session.serve_options())
        if session.streamer is not None:
            print(session.streamer.finish(), end="", flush=True)
        phase(rank, "collect")
        doc = session.collect(report)
        if doc is not None:
            from twinfer.exec.report import finish_run

            finish_run(args, session, doc)
        session.close()
        phase(rank, "done")
        if session.stuck:  # a thread sits in NCCL's teardown: exit around it
            sys.stdout.flush()
            sys.stderr.flush()
            MPI.Finalize()
            os._exit(0)
        return 0
    except BaseException as exc:  # noqa: BLE001 - every failure must abort the job
        abort(world, exc)
        return 1


def abort(world, exc: BaseException) -> None:
    """Print ``rank R failed: ...`` and take the whole job down."""
    sys.stderr.write(f"rank {world.Get_rank()} failed: {type(exc).__name__}: {exc}\n")
    if not isinstance(exc, SpecError) and os.environ.get("TWINFER_TRACEBACK"):
        traceback.print_exc()
    sys.stderr.flush()
    sys.stdout.flush()
    world.Abort(2 if isinstance(exc, SpecError) else 1)


def configure(args: ExecArgs, world_size: int, scenario: Scenario | None = None) -> RunConfig:
    """Rank 0: everything that can be checked before any GPU work."""
    from twinfer.exec.groups import check_world

    scenario = scenario or load_scenario(args.scenario)
    check_world(scenario.placement(), world_size)
    model = scenario.model
    if args.checkpoint:
        from twinfer.exec.weights import CheckpointWeights

        CheckpointWeights(args.checkpoint, model, "cpu", None)
    prompt_ids = None
    if args.prompt is not None:
        from twinfer.exec.text import tokenizer_for

        prompt_ids = tokenizer_for(args.tokenizer, model.vocab).encode(args.prompt)
        requests = [Request(0, 0.0, len(prompt_ids), args.max_new_tokens)]
    else:
        requests = scenario.requests()
    longest = max(r.prompt_tokens + r.output_tokens for r in requests)
    if longest > model.max_position:
        raise SpecError("workload", f"a request spans {longest} tokens but the model's "
                        f"max_position is {model.max_position}", "shorten prompts or outputs")
    return RunConfig(scenario.to_dict(), scenario.base_dir, requests, prompt_ids)

TEARDOWN_S = 30.0  # longest wait for torch.distributed's teardown (TWINFER_TEARDOWN_S)
HANG_TEARDOWN_ENV = "TWINFER_HANG_TEARDOWN"  # test hook: the teardown never returns


@dataclass
class Session:
    """One rank, set up: torch.distributed initialized, engine built (None if idle)."""

    args: ExecArgs
    world: object  # MPI.Comm
    config: RunConfig
    scenario: Scenario
    device: object  # torch.device
    groups: object = None  # Groups | None
    engine: object = None  # Engine | None
    info: dict = field(default_factory=dict)
    reports: list = field(default_factory=list)  # rank 0: every rank's last ServeReport
    streamer: object = None  # the driver's tokenizer while it streams --prompt output
    stuck: bool = False  # torch.distributed's teardown did not return (see close)

    def sequences(self, requests: list[Request] | None = None) -> list[Sequence]:
        """This pipeline's share of the requests (rid modulo pipelines), as sequences."""
        from twinfer.exec.text import sequences

        if self.groups is None:
            return []
        if self.config.prompt_ids is not None and requests is None:
            return [Sequence(0, 0.0, list(self.config.prompt_ids), self.args.max_new_tokens)]
        pipes = len(self.scenario.placement().pipelines)
        mine = [r for r in (requests or self.config.requests)
                if r.rid % pipes == self.groups.pipeline_index]
        return sequences(mine, self.scenario.model.vocab, self.scenario.workload.seed)

    def serve_options(self):
        from twinfer.exec.engine import ServeOptions
        from twinfer.exec.text import tokenizer_for

        args, on_token = self.args, None
        if (args.stream and self.engine is not None and self.engine.control.is_driver
                and self.config.prompt_ids is not None):
            tok = self.streamer = tokenizer_for(args.tokenizer, self.scenario.model.vocab)

            def on_token(rid: int, token: int) -> None:
                print(tok.stream(token), end="", flush=True)

        return ServeOptions(temperature=args.temperature, seed=args.seed,
                            wall_clock_arrivals=args.arrivals == "scenario",
                            on_token=on_token, keep_logits=args.dump_logits is not None)

    def serve(self, seqs: list[Sequence], opts):
        """Serve on this rank (idle ranks return None at once)."""
        return self.engine.serve(seqs, opts) if self.engine is not None else None

    def collect(self, report) -> dict | None:
        """Gather every rank's report on rank 0 and build the results document there."""
        from twinfer.exec.report import results_document

        gathered = self.world.gather((report, self.info), root=0)
        if self.world.Get_rank() != 0:
            return None
        self.reports = [rep for rep, _ in gathered]
        return results_document(self, gathered)

    def close(self) -> None:
        """Take torch.distributed down once every rank's GPU work is done.

        Seen on two H200s: TP=2 runs wrote their results, then hung here with the decode
        graphs (which hold captured NCCL all-reduces) still alive. The graphs go first,
        the device drains, the ranks meet; and should NCCL's teardown still not return
        within ``TEARDOWN_S``, the rank says so and leaves without it (`rank_main`).
        """
        import threading

        import torch
        import torch.distributed as dist

        from twinfer.exec.control import CPU_POLL_S, poll_barrier

        release = getattr(self.engine, "release_graphs", None)
        if release is not None:
            release()
        gc.collect()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        poll_barrier(self.world, 0.0 if self.device.type == "cuda" else CPU_POLL_S)
        if not dist.is_initialized():
            return
        teardown = dist.destroy_process_group
        if os.environ.get(HANG_TEARDOWN_ENV):
            teardown = threading.Event().wait
        wait_s = float(os.environ.get("TWINFER_TEARDOWN_S", TEARDOWN_S))
        done = threading.Thread(target=teardown, daemon=True, name="twinfer-teardown")
        done.start()
        done.join(wait_s)
        if done.is_alive():
            warn(self.world.Get_rank(), f"torch.distributed teardown did not return in "
                 f"{wait_s:g} s; leaving without it")
            self.stuck = True


def open_session(args: ExecArgs, world, scenario: Scenario | None = None) -> Session:
    """Configure (rank 0, broadcast), pick the device, init torch.distributed, build the
    groups and this rank's engine; on GPU, run a short warm-up (kernel compilation)."""
    rank, size = world.Get_rank(), world.Get_size()
    config = configure(args, size, scenario) if rank == 0 else None
    phase(rank, f"configure (world {size})")
    config = world.bcast(config, root=0)
    scenario = config.load()

    import torch
    import torch.distributed as dist
    from mpi4py import MPI

    from twinfer.exec.control import ControlPlane
    from twinfer.exec.engine import Engine, EngineOptions, ServeOptions
    from twinfer.exec.groups import build_groups

    threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if threads:
        torch.set_num_threads(threads)
    node = world.Split_type(MPI.COMM_TYPE_SHARED)
    local_rank = node.Get_rank()
    device = _device(args.device, local_rank)
    _check_devices(node, device, rank)
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    pinned = pin_core(local_rank) if device.type == "cuda" else None
    phase(rank, f"device {device} (local rank {local_rank} of {node.Get_size()}, "
                f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')}, "
                f"CPU core {pinned})")
    addr, port = rendezvous_address(world)
    timeout = timedelta(seconds=float(os.environ.get("TWINFER_COLLECTIVE_TIMEOUT_S", "120")))
    phase(rank, f"init_process_group {'nccl' if device.type == 'cuda' else 'gloo'} "
                f"tcp://{addr}:{port}")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            init_method=f"tcp://{addr}:{port}", rank=rank, world_size=size,
                            timeout=timeout)
    phase(rank, "build_groups")
    groups = build_groups(scenario.placement(), rank)
    from twinfer.exec.fa_pool_exec import PoolServer, pool_link
    from twinfer.exec.layouts import graphs_allowed

    placement = scenario.placement()
    pool = pool_link(scenario.layout, placement.pipelines[0].stages[-1].leader, world)
    active = world.Split(0 if groups is not None else MPI.UNDEFINED, rank)
    session = Session(args, world, config, scenario, device, groups,
                      info={"rank": rank, "pipeline": None, "idle": True})
    if groups is None:
        if pool is not None and rank in pool.pool:  # an FA Pool rank: serves the base
            session.engine = PoolServer(pool, scenario.model, device,
                                        scenario.scheduler.kv_block_tokens,
                                        scenario.scheduler.gpu_memory_utilization)
            session.info = session.engine.info
            if args.warmup and device.type == "cuda":  # mirrors the base's warm-up serve
                session.engine.serve()
        return session
    control = ControlPlane(world, active, groups, device)
    opts = EngineOptions(checkpoint=args.checkpoint, seed=args.seed, layout=scenario.layout,
                         pool=pool,
                         cuda_graphs=args.cuda_graphs and graphs_allowed(scenario.layout))
    phase(rank, f"engine build (stage {groups.stage_index}, tp rank {groups.tp_rank}/"
                f"{groups.tp_size}, driver {groups.driver}, graphs {opts.cuda_graphs})")
    engine = Engine.build(scenario.model, groups, scenario.scheduler, opts, control)
    phase(rank, f"engine built: {engine.num_blocks} KV pages")
    if args.warmup and device.type == "cuda":  # compile kernels outside the timings
        prompts = warmup_prompts([r.prompt_tokens for r in sorted(
            config.requests, key=lambda r: r.arrival_s)], scenario.scheduler,
            groups.pipeline.micro_batches, scenario.model.max_position - 4)
        for _ in range(warmup_serves()):
            phase(rank, f"warm-up serve ({len(prompts)} prompts, {sum(prompts)} tokens)")
            engine.serve([Sequence(-1 - i, 0.0, [1] * n, 4) for i, n in enumerate(prompts)],
                         ServeOptions(wall_clock_arrivals=False))
        # Eager decode steps of more sequences than that serve decoded use other kernel
        # specializations (the skinny GEMV's multi-row configuration): a first use in the
        # measured serve cost one eager decode step 0.59 s of compilation on a fresh H100
        # (docs/VALIDATION.md). Decode graphs are warmed by their capture.
        batch = warmup_decode_batch(len(config.requests), scenario.scheduler,
                                    groups.pipeline.micro_batches)
        if not opts.cuda_graphs and batch > len(prompts):
            phase(rank, f"warm-up serve of eager decode ({batch} sequences)")
            engine.serve([Sequence(-1 - len(prompts) - i, 0.0, [1] * 16, 4)
                          for i in range(batch)], ServeOptions(wall_clock_arrivals=False))
    session.engine = engine
    session.info = {
        "rank": rank, "pipeline": groups.pipeline_index, "stage": groups.stage_index,
        "tp_rank": groups.tp_rank, "tp": groups.tp_size, "leader": groups.is_leader,
        "driver": groups.is_driver, "device": _device_name(device), **engine.info,
        "num_blocks": engine.num_blocks, "page_size": scenario.scheduler.kv_block_tokens,
        "cpu_core": pinned, "cpus_allowed": allowed}
    return session


WARMUP_SERVES_ENV = "TWINFER_WARMUP_SERVES"  # warm-up serves before the measured one


def warmup_serves() -> int:
    """How many warm-up serves run before the measured one (``TWINFER_WARMUP_SERVES``,
    default 1; GPU runs with warm-up only)."""
    value = os.environ.get(WARMUP_SERVES_ENV, "1")
    if not value.isdigit():
        raise SpecError(WARMUP_SERVES_ENV, f"{value!r} is not a count", "give 0, 1, 2, ...")
    return int(value)


def warmup_prompts(prompts: list[int], sched, micro_batches: int, longest: int) -> list[int]:
    """Prompt lengths for the warm-up serve: what the first prefill step will pack (the
    workload's first prompts, up to the step's token budget, its running cap and one
    micro-batch group's share), and at least the longest prompt alone, so that no
    measured prefill pays the first use of its shapes (kernel specializations, library
    heuristics, allocator growth). A packed first step of four 256-token prompts was
    seen to take 7-9 ms more than its kernels when the warm-up had used one 256-token
    prompt (docs/VALIDATION.md)."""
    budget = sched.max_prefill_tokens
    cap = warmup_decode_batch(len(prompts), sched, micro_batches)
    first, tokens = [], 0
    for n in (min(n, budget, longest) for n in prompts):
        if first and (tokens + n > budget or len(first) >= cap):
            break
        first.append(n)
        tokens += n
    alone = max(16, min(max(prompts, default=16), budget, longest))
    return first if max(first, default=0) >= alone else [alone]


def warmup_decode_batch(requests: int, sched, micro_batches: int) -> int:
    """The most sequences one decode step of the workload carries (its running cap and
    one micro-batch group's share)."""
    return max(1, min(sched.max_running, ceil(requests / max(1, micro_batches))))


PIN_CORE_ENV = "TWINFER_PIN_CORE"  # "auto" (default), "off", or a core per local rank


def pin_core(local_rank: int) -> int | None:
    """Pin a GPU rank (and the threads it starts after this: NCCL's, MPI's) to one CPU
    core; returns the core, or None where it stays as it was.

    A GPU rank's host work is one Python thread launching kernels, and on the device
    machines its speed depended on where it ran: the same 512-token prefill (host-paced)
    took 18-23 ms of host time in four unpinned runs and 12.0-13.8 ms pinned to one of
    cores 0-3, 8 or 12 (two other cores were as slow as unpinned;
    docs/BENCHMARKS.md). ``TWINFER_PIN_CORE``: ``auto`` takes the ``local_rank``-th
    core this process may run on, and only when it may run on every core (a job the
    user bound through ``mpirun --bind-to`` keeps its binding); ``off`` leaves it; a
    comma list names a core per local rank. Threads the rank starts later inherit the
    core, NCCL's among them: over NVLink they idle, but a multi-node job over
    InfiniBand, whose NCCL proxy thread moves data, should bind ranks to several cores
    with ``mpirun`` (or set ``off``)."""
    value = os.environ.get(PIN_CORE_ENV, "auto").strip().lower()
    if value == "off" or not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    if value == "auto":
        if len(allowed) < (os.cpu_count() or 1) or len(allowed) < 2:
            return None
        core = allowed[local_rank % len(allowed)]
    else:
        try:
            cores = [int(c) for c in value.split(",")]
        except ValueError:
            raise SpecError(PIN_CORE_ENV, f"{value!r} is not auto, off or a list of cores",
                            "give e.g. TWINFER_PIN_CORE=0,1") from None
        core = cores[local_rank % len(cores)]
        if core not in allowed:
            raise SpecError(PIN_CORE_ENV, f"core {core} is not one this rank may run on "
                            f"({allowed[0]}-{allowed[-1]}, {len(allowed)} cores)",
                            "name cores of this machine, or set it to auto or off")
    os.sched_setaffinity(0, {core})
    return core


def _device(choice: str, local_rank: int):
    """The rank's device: its node-local rank modulo the node's visible GPUs."""
    import torch

    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SpecError("--device", "cuda was asked for but no GPU is visible",
                        "use --device cpu")
    device = torch.device("cuda", local_rank % torch.cuda.device_count())
    torch.cuda.set_device(device)
    return device


def _check_devices(node, device, rank: int) -> None:
    """Two ranks of one node on one GPU (a too-short CUDA_VISIBLE_DEVICES) would make
    NCCL fail or hang: refuse, naming the ranks."""
    if device.type != "cuda":
        return
    taken = node.allgather(device.index)
    if len(set(taken)) != len(taken):
        raise SpecError("--device", f"ranks of one node share GPUs (node-local GPU of each "
                        f"rank: {taken}; rank {rank} has cuda:{device.index})",
                        "make as many GPUs visible as ranks run on the node")


def _device_name(device) -> str:
    import platform

    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"
