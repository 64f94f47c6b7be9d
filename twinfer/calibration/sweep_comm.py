"""Collective microbenchmarks across the visible devices, one process per device.

Runs under ``mpirun -np N python -m twinfer.calibration.sweep_comm JOB.json`` (the
executor's launch path: MPI gives ranks and the control plane, torch.distributed
carries the tensors, NCCL on GPUs and gloo on CPU). For every group size g = 2..N
the first g ranks form a group and time all_reduce, all_gather, reduce_scatter,
broadcast and send/recv (a ping-pong between ranks 0 and 1, halved) over the job's
message sizes. ``bytes`` is the tensor size per rank as torch.distributed sees it
(docs/PROFILE.md): the reduced tensor, each rank's all_gather input shard (the output
is ``ranks`` times larger), each rank's full reduce_scatter input, the broadcast
tensor, one message.

Each timing is a batch of back-to-back operations divided by its length (so that
small messages are not dominated by the host), repeated; the time of a batch is the
slowest rank's, and the sample is the median over batches. After each (op, group
size) group rank 0 appends the samples to the run's partial file (see ``store``), so
an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from twinfer.calibration.store import PartialStore

BATCHES = 5
TARGET_BATCH_S = 0.01


@dataclass(frozen=True)
class CommJob:
    """What the parent process asks the collectives job to measure."""

    partial: str
    fingerprint: dict
    sizes_bytes: list[int]
    ops: list[str]
    device: str
    link_kind: str
    quick: bool = False

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.__dict__))

    @classmethod
    def read(cls, path: Path) -> CommJob:
        return cls(**json.loads(Path(path).read_text()))


def group_key(op: str, ranks: int, link_kind: str) -> str:
    return f"collective/{link_kind}/{op}/{ranks}"


def init_distributed(comm, device: str) -> torch.device:
    """torch.distributed over the MPI job, as the executor starts it: rank 0's address
    and a free port broadcast over MPI; a rank's GPU is its rank on its node."""
    from mpi4py import MPI

    from twinfer.exec.launch import rendezvous_address

    rank, size = comm.Get_rank(), comm.Get_size()
    addr, port = rendezvous_address(comm)
    if device == "cuda":
        local = comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()
        torch.cuda.set_device(local % torch.cuda.device_count())
        dev, backend = torch.device("cuda", torch.cuda.current_device()), "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    dist.init_process_group(backend, init_method=f"tcp://{addr}:{port}", rank=rank,
                            world_size=size)
    return dev


def _op_runner(op: str, nbytes: int, group, ranks: int, dev: torch.device):
    """A zero-argument callable doing one ``op`` of ``nbytes`` inside ``group``."""
    # bf16 on GPUs, as the executor's activations; fp32 for gloo. Zeros, so that
    # repeated reductions never overflow.
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    width = torch.finfo(dtype).bits // 8
    elems = max(ranks, nbytes // width)
    elems -= elems % ranks
    rank = dist.get_rank()
    buf = torch.zeros(elems, dtype=dtype, device=dev)
    if op == "all_reduce":
        return lambda: dist.all_reduce(buf, group=group)
    if op == "all_gather":
        out = torch.empty(elems * ranks, dtype=dtype, device=dev)
        return lambda: dist.all_gather_into_tensor(out, buf, group=group)
    if op == "reduce_scatter":
        out = torch.empty(elems // ranks, dtype=dtype, device=dev)
        return lambda: dist.reduce_scatter_tensor(out, buf, group=group)
    if op == "broadcast":
        return lambda: dist.broadcast(buf, src=0, group=group)
    peer = 1 - rank  # send_recv: ping-pong between ranks 0 and 1

    def ping_pong() -> None:
        if rank == 0:
            dist.send(buf, dst=peer)
            dist.recv(buf, src=peer)
        else:
            dist.recv(buf, src=peer)
            dist.send(buf, dst=peer)

    return ping_pong


def _batch_s(fn, iters: int, dev: torch.device) -> float:
    if dev.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize(dev)
        return start.elapsed_time(end) * 1e-3 / iters
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) / iters


def _per_op_median_s(fn, reps: int) -> float:
    times_s = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times_s.append(time.perf_counter() - t0)
    return statistics.median(times_s)


def time_collective(comm, fn, dev: torch.device, quick: bool) -> float:
    """Seconds per operation, as the slowest rank of the group saw it.

    CUDA: median over batches of back-to-back operations between two events (small
    messages stay device-bound). CPU: every operation timed alone and the median
    taken, because gloo on a shared host has rare multi-millisecond stalls that a
    batch mean would smear over every sample.
    """
    from mpi4py import MPI

    for _ in range(2):  # the first call in a new group also sets up its communicator
        fn()
    comm.Barrier()
    probe = comm.allreduce(min(_batch_s(fn, 1, dev) for _ in range(3)), op=MPI.MAX)
    if dev.type != "cuda":
        target_s, lo, hi = (0.02, 11, 31) if quick else (0.1, 21, 101)
        reps = int(comm.bcast(min(hi, max(lo, target_s / max(probe, 1e-7))), root=0))
        comm.Barrier()
        return comm.allreduce(_per_op_median_s(fn, reps), op=MPI.MAX)
    iters = int(comm.bcast(min(50, max(2, TARGET_BATCH_S / max(probe, 1e-7))), root=0))
    per_batch = []
    for _ in range(3 if quick else BATCHES):
        comm.Barrier()
        per_batch.append(comm.allreduce(_batch_s(fn, min(iters, 10) if quick else iters, dev),
                                        op=MPI.MAX))
    return statistics.median(per_batch)


GRAPH_MAX_BYTES = 4 << 20  # graph-replayed all_reduce: the decode steps' message sizes
GRAPH_OPS_PER_REPLAY = 32


def time_graphed(comm, fn, dev: torch.device, quick: bool) -> float:
    """Seconds per operation when ``GRAPH_OPS_PER_REPLAY`` of them are replayed from one
    CUDA graph, as the executor's decode steps run them: no host launch between them,
    which the eager batches of `time_collective` still pay for small messages. The
    slowest rank's median over replays."""
    from mpi4py import MPI

    stream = torch.cuda.Stream(dev)
    stream.wait_stream(torch.cuda.current_stream(dev))
    graph = torch.cuda.CUDAGraph()
    comm.Barrier()
    with torch.cuda.graph(graph, stream=stream):
        for _ in range(GRAPH_OPS_PER_REPLAY):
            fn()
    torch.cuda.synchronize(dev)
    graph.replay()  # warm
    torch.cuda.synchronize(dev)
    per_replay = []
    for _ in range(3 if quick else BATCHES):
        comm.Barrier()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize(dev)
        mine = start.elapsed_time(end) * 1e-3 / GRAPH_OPS_PER_REPLAY
        per_replay.append(comm.allreduce(mine, op=MPI.MAX))
    del graph
    return statistics.median(per_replay)


def _time_oneshot(comm, group, dev: torch.device, job: CommJob) -> dict[str, list[dict]]:
    """The executor's one-shot symmetric-memory all-reduce (`twinfer.exec.symm_allreduce`)
    at the job's sizes up to its ``MAX_BYTES``, eager and replayed from a graph; empty
    where the group cannot take it (CPU, no symm_mem ops). Collective over ``comm``."""
    from twinfer.exec.symm_allreduce import SymmAllReduce, why_unavailable

    if why_unavailable(group, dev) is not None:
        return {"eager": [], "graph": []}
    dtype = torch.bfloat16
    path = SymmAllReduce(group, dev, dtype)
    eager, graph = [], []
    for nbytes in job.sizes_bytes:
        if nbytes > path.max_bytes:
            continue
        x = torch.zeros(nbytes // dtype.itemsize, dtype=dtype, device=dev)
        if not path.fits(x):
            continue

        def fn(x: torch.Tensor = x) -> torch.Tensor:
            return path(x)

        eager.append({"bytes": nbytes, "time_s": time_collective(comm, fn, dev, job.quick)})
        graph.append({"bytes": nbytes, "time_s": time_graphed(comm, fn, dev, job.quick)})
    return {"eager": eager, "graph": graph}


def run_job(job: CommJob) -> None:
    """Every rank runs this; rank 0 records the groups."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    dev = init_distributed(comm, job.device)
    store = PartialStore(Path(job.partial), job.fingerprint) if rank == 0 else None
    done = comm.bcast(sorted(store.groups) if store else None, root=0)
    for ranks in range(2, size + 1):
        members = list(range(ranks))
        group = dist.new_group(members)  # every rank must call new_group
        for op in job.ops:
            key = group_key(op, ranks, job.link_kind)
            if key in done or (op == "send_recv" and ranks != 2):
                continue
            samples, graph_samples, oneshot = [], [], {"eager": [], "graph": []}
            if rank < ranks:
                sub = comm.Split(0)
                for nbytes in job.sizes_bytes:
                    fn = _op_runner(op, nbytes, group, ranks, dev)
                    t = time_collective(sub, fn, dev, job.quick)
                    samples.append({"bytes": nbytes, "time_s": t / (2 if op == "send_recv"
                                                                      else 1)})
                    if op == "all_reduce" and dev.type == "cuda" and nbytes <= GRAPH_MAX_BYTES:
                        graph_samples.append({"bytes": nbytes,
                                              "time_s": time_graphed(sub, fn, dev, job.quick)})
                if op == "all_reduce":
                    oneshot = _time_oneshot(sub, group, dev, job)
                sub.Free()
            else:
                comm.Split(MPI.UNDEFINED)
            if rank == 0:
                store.add(key, {"kind": "collective", "link": job.link_kind, "op": op,
                                "ranks": ranks, "samples": samples,
                                **({"graph_samples": graph_samples} if graph_samples else {}),
                                **({"oneshot_samples": oneshot["eager"],
                                    "oneshot_graph_samples": oneshot["graph"]}
                                   if oneshot["graph"] else {})})
            comm.Barrier()
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: mpirun -np N python -m twinfer.calibration.sweep_comm JOB.json",
              file=sys.stderr)
        return 2
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    run_job(CommJob.read(Path(args[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
