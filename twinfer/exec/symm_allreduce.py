"""Small all-reduces inside one NVLink domain through PyTorch symmetric memory.

A TP decode step all-reduces two [batch, hidden] activations per layer: 8 KB at batch 1
for an 8B model, 64 of them per step. NCCL replayed from a CUDA graph takes ~10 us for
each on two H200s (docs/VALIDATION.md), most of it protocol, not bytes. The one-shot
algorithm is one kernel: every rank copies its partial into its symmetric buffer,
the ranks meet on the buffer's signal pad, and each reads every peer's buffer over
NVLink and sums (``torch.ops.symm_mem.one_shot_all_reduce_copy_out``, PyTorch's own
kernel; vLLM's and TensorRT-LLM's "custom all-reduce" are the same idea). Each rank
reads ``(ranks - 1) * bytes`` over NVLink, so it pays only for small messages; above
``max_bytes`` the caller goes back to NCCL.

The kernel's barrier is at its start: once a rank has passed it, its peers have
written their partials, but a slow peer may still be reading *this* rank's buffer from
the previous all-reduce when this rank's next copy lands. Two buffers used in turn
close that race: reduce ``n + 2`` overwrites the buffer of reduce ``n`` only after
every peer has entered reduce ``n + 1``, which it does after finishing ``n``'s reads
(kernels run in stream order). A decode step makes an even number of reduces, so a
graph replayed step after step keeps the alternation.

NVLink multicast stays off (``TORCH_SYMM_MEM_DISABLE_MULTICAST=1``), as everywhere in
the executor. ``TWINFER_SYMM_ALL_REDUCE=off`` disables the path (NCCL for every size).
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.distributed as dist

ENV = "TWINFER_SYMM_ALL_REDUCE"
# Largest message the one-shot path takes (bytes per rank). Decode steps up to batch
# 128 of an 8K-hidden model; prefill chunks above it go through NCCL's ring.
MAX_BYTES = 1 << 20
MAX_RANKS = 8  # one NVLink domain (an HGX board)


def why_unavailable(group: dist.ProcessGroup | None, device: torch.device) -> str | None:
    """None if the one-shot path can run on this group and device, else why not."""
    if os.environ.get(ENV, "").lower() in ("0", "off", "false", "no"):
        return f"{ENV}=off"
    if device.type != "cuda":
        return "not a CUDA device"
    if group is None or dist.get_world_size(group) < 2:
        return "no group to reduce over"
    if dist.get_world_size(group) > MAX_RANKS:
        return f"group of {dist.get_world_size(group)} ranks spans more than one NVLink domain"
    if dist.get_backend(group) != "nccl":
        return f"backend {dist.get_backend(group)}, not nccl"
    ops = getattr(torch.ops, "symm_mem", None)
    if ops is None or not hasattr(ops, "one_shot_all_reduce_copy_out"):
        return f"torch {torch.__version__} has no symm_mem.one_shot_all_reduce_copy_out"
    return None


def enable_group(group_name: str) -> None:
    """Let ``group_name`` rendezvous symmetric memory (needed by torch <= 2.11; a
    deprecated no-op in newer torch). Shared with the fused KV-sharded exchange."""
    import torch.distributed._symmetric_memory as symm_mem

    if hasattr(symm_mem, "enable_symm_mem_for_group"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            symm_mem.enable_symm_mem_for_group(group_name)


class SymmAllReduce:
    """One-shot all-reduce of messages up to ``max_bytes`` within ``group``.

    Collective to build: every rank of the group constructs it, in the same order.
    Call ``fits(x)`` first; ``__call__`` returns a new tensor (out of place).
    """

    def __init__(self, group: dist.ProcessGroup, device: torch.device, dtype: torch.dtype,
                 max_bytes: int = MAX_BYTES) -> None:
        import torch.distributed._symmetric_memory as symm_mem

        os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
        self.group, self.device, self.dtype = group, device, dtype
        self.group_name = group.group_name
        self.max_bytes = max_bytes
        self.ranks = dist.get_world_size(group)
        enable_group(self.group_name)
        elems = max_bytes // dtype.itemsize
        self.buffers = []
        for _ in range(2):
            buf = symm_mem.empty(elems, dtype=dtype, device=device)
            buf.zero_()
            symm_mem.rendezvous(buf, self.group_name)
            self.buffers.append(buf)
        torch.cuda.synchronize(device)
        dist.barrier(group=group, device_ids=[device.index])
        self.calls = 0

    @classmethod
    def maybe(cls, group: dist.ProcessGroup | None, device: torch.device,
              dtype: torch.dtype, max_bytes: int = MAX_BYTES) -> SymmAllReduce | None:
        """The path if this group and device can take it, else None (NCCL throughout).
        Collective: every rank of the group must call it."""
        if why_unavailable(group, device) is not None:
            return None
        return cls(group, device, dtype, max_bytes)

    def fits(self, x: torch.Tensor) -> bool:
        nbytes = x.numel() * x.element_size()
        return (x.dtype == self.dtype and x.is_contiguous() and nbytes <= self.max_bytes
                and nbytes % 16 == 0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        buf = self.buffers[self.calls % 2]
        self.calls += 1
        out = torch.empty_like(x)
        torch.ops.symm_mem.one_shot_all_reduce_copy_out(
            buf[:x.numel()], x.view(-1), "sum", self.group_name, out.view(-1))
        return out

    def describe(self) -> str:
        return (f"one-shot symmetric-memory all-reduce up to {self.max_bytes} B "
                f"({self.ranks} ranks), NCCL above")


def _self_check(path: SymmAllReduce, group: dist.ProcessGroup, dev: torch.device) -> list[str]:
    """Errors of the one-shot path against NCCL (empty: all agree): single calls at sizes
    from 16 B to ``max_bytes``, then a CUDA graph of 64 chained calls replayed with fresh
    inputs (the two-buffer alternation under back-to-back reuse)."""
    rank = dist.get_rank(group)
    gen = torch.Generator(device=dev).manual_seed(1234 + rank)
    errors = []
    elems = 8
    while elems * path.dtype.itemsize <= path.max_bytes:
        x = torch.randn(elems, generator=gen, device=dev).to(path.dtype)
        want = x.clone()
        dist.all_reduce(want, group=group)
        got = path(x)
        if not torch.allclose(got.float(), want.float(), rtol=1e-2, atol=1e-2):
            errors.append(f"{elems * path.dtype.itemsize} B: max error "
                          f"{(got.float() - want.float()).abs().max().item():.3g}")
        elems *= 8

    def chain(x: torch.Tensor, reduce) -> torch.Tensor:
        for _ in range(64):
            x = reduce(x) * (1.0 / path.ranks)  # keeps the values bounded
        return x

    def nccl(x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        dist.all_reduce(y, group=group)
        return y

    static = torch.zeros(4096, dtype=path.dtype, device=dev)
    stream = torch.cuda.Stream(dev)
    stream.wait_stream(torch.cuda.current_stream(dev))
    with torch.cuda.stream(stream):
        chain(static, path)  # warm outside the capture
    torch.cuda.current_stream(dev).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        out = chain(static, path)
    for replay in range(5):
        static.copy_(torch.randn(4096, generator=gen, device=dev).to(path.dtype))
        want = chain(static.clone(), nccl)
        graph.replay()
        torch.cuda.synchronize(dev)
        if not torch.allclose(out.float(), want.float(), rtol=2e-2, atol=2e-2):
            errors.append(f"graph replay {replay}: max error "
                          f"{(out.float() - want.float()).abs().max().item():.3g}")
    del graph
    return errors


def main() -> int:
    """``mpirun -np N python -m twinfer.exec.symm_allreduce``: checks the one-shot path
    against NCCL on this machine's GPUs and times both, replayed from CUDA graphs."""
    import json

    from mpi4py import MPI

    from twinfer.calibration.sweep_comm import init_distributed, time_collective, time_graphed

    comm = MPI.COMM_WORLD
    dev = init_distributed(comm, "cuda")
    group = dist.new_group(list(range(comm.Get_size())))
    why = why_unavailable(group, dev)
    if why is not None:
        print(f"one-shot all-reduce unavailable: {why}", flush=True)
        return 2
    path = SymmAllReduce(group, dev, torch.bfloat16)
    errors = _self_check(path, group, dev)
    errors = [e for errs in comm.allgather(errors) for e in errs]
    rows = []
    for nbytes in (4096, 8192, 65536, 262144, 1 << 20):
        x = torch.zeros(nbytes // 2, dtype=torch.bfloat16, device=dev)

        def ours(x: torch.Tensor = x) -> torch.Tensor:
            return path(x)

        def theirs(x: torch.Tensor = x) -> None:
            dist.all_reduce(x, group=group)

        rows.append({"bytes": nbytes,
                     "oneshot_eager_us": time_collective(comm, ours, dev, False) * 1e6,
                     "oneshot_graph_us": time_graphed(comm, ours, dev, False) * 1e6,
                     "nccl_eager_us": time_collective(comm, theirs, dev, False) * 1e6,
                     "nccl_graph_us": time_graphed(comm, theirs, dev, False) * 1e6})
    if comm.Get_rank() == 0:
        print(json.dumps({"device": torch.cuda.get_device_name(dev), "ranks": path.ranks,
                          "errors": errors, "timings": rows}), flush=True)
        print("PASS" if not errors else "FAIL", flush=True)
    dist.barrier(group=group, device_ids=[dev.index])
    dist.destroy_process_group()
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
