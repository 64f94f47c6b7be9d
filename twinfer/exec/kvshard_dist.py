"""torch.distributed from inside an ``mpirun`` job, for the kv_sharded benchmark.

MPI gives the ranks and the control plane; torch.distributed (NCCL on GPUs, gloo on
CPU) is initialized from it: rank 0 picks a free TCP port and broadcasts it. Ranks
on one host are given GPUs in rank order.
"""

from __future__ import annotations

import platform
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world: int
    device: torch.device
    group: dist.ProcessGroup
    mpi_comm: object  # mpi4py.MPI.Comm over the same ranks, same order

    @property
    def device_name(self) -> str:
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return f"cpu ({platform.processor() or platform.machine()})"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def init_from_mpi(device_kind: str, timeout_s: float = 120.0) -> DistEnv:
    """Initialize the default process group from MPI.COMM_WORLD ("cuda" or "cpu")."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    hosts = comm.allgather(socket.gethostname())
    if device_kind == "cuda":
        local_rank = hosts[:rank].count(hosts[rank])
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"rank {rank} is local rank {local_rank} on {hosts[rank]}, which "
                               f"has {torch.cuda.device_count()} GPUs: launch fewer ranks")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    addr = "127.0.0.1" if len(set(hosts)) == 1 else socket.gethostbyname(hosts[0])
    port = comm.bcast(_free_port() if rank == 0 else None, root=0)
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            init_method=f"tcp://{addr}:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=timeout_s), **kwargs)
    return DistEnv(rank, world, device, dist.group.WORLD, comm)


def versions() -> dict[str, str]:
    """Library versions for a results JSON."""
    import triton
    from mpi4py import MPI

    mpi = MPI.Get_library_version().strip("\x00\n ").splitlines()[0]
    out = {"python": platform.python_version(), "torch": torch.__version__,
           "triton": triton.__version__, "mpi": mpi}
    if torch.cuda.is_available():
        out["cuda"] = str(torch.version.cuda)
        out["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
    return out
