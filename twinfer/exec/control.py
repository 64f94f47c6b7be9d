"""The MPI control plane: step plans from a pipeline's driver, agreement, barriers.

Tensors travel over torch.distributed; everything else travels here, over MPI: the
driver (the last stage's leader) pickles each `Plan` once and posts a non-blocking
send to every other rank of its pipeline, which receive plans in order. Sends never
wait for the receiver, so the driver can keep ``micro_batches`` plans in flight.

Receivers poll (``Iprobe``) rather than block in ``Recv``: on a GPU they spin (a plan's
latency is on the critical path of every decode step); on CPU they sleep between polls
so that oversubscribed ranks (tests run 4 ranks on 2 cores) leave the cores to the
ranks that compute.
"""

from __future__ import annotations

import pickle
import time

import torch

from twinfer.exec.groups import Groups

try:
    from mpi4py import MPI
except ImportError:  # LocalControl needs no MPI
    MPI = None

PLAN_TAG = 7
CPU_POLL_S = 2e-4


class ControlPlane:
    """MPI messaging of one active rank. ``active`` spans every rank of the placement."""

    def __init__(self, world: object, active: object, groups: Groups,
                 device: torch.device) -> None:
        self.world, self.active, self.groups, self.device = world, active, groups, device
        self.rank = groups.rank
        self.driver = groups.driver
        self.followers = [r for r in groups.pipeline.gpus if r != groups.driver]
        self.poll_s = 0.0 if device.type == "cuda" else CPU_POLL_S
        self._sends: list[tuple[object, bytes]] = []  # (MPI request, pickled plan)

    @property
    def is_driver(self) -> bool:
        return self.rank == self.driver

    def send_plan(self, plan: object) -> None:
        """Driver: post ``plan`` (None: stop) to every other rank of the pipeline."""
        data = pickle.dumps(plan, protocol=pickle.HIGHEST_PROTOCOL)
        for r in self.followers:
            self._sends.append((self.world.Isend([data, MPI.BYTE], dest=r, tag=PLAN_TAG), data))
        # forget sends that completed; keep the bytes of the others alive
        self._sends = [(req, d) for req, d in self._sends if not req.Test()]

    def wait_device(self) -> None:
        """Driver: wait for the device's queued work while progressing the plan sends.

        Seen on two H200s (Open MPI 4.1.6, no single-copy shared-memory transport): a
        plan above the eager limit goes by rendezvous, so the follower's ``Recv``
        completes only while the sender calls into MPI. A driver that blocked in a
        CUDA sync (sampling's ``tolist``) waited on a TP all-reduce that needed the
        follower, which waited in ``Recv`` on the driver: a deadlock. Polling the
        device while testing the sends keeps both moving.
        """
        if self.device.type != "cuda":
            return
        done = torch.cuda.Event()
        done.record()
        while not done.query():
            self._sends = [(req, d) for req, d in self._sends if not req.Test()]

    def recv_plan(self) -> object:
        """Follower: the next plan from the driver, in order (None: stop)."""
        status = MPI.Status()
        while not self.world.Iprobe(source=self.driver, tag=PLAN_TAG, status=status):
            if self.poll_s:
                time.sleep(self.poll_s)
        buf = bytearray(status.Get_count(MPI.BYTE))
        self.world.Recv([buf, MPI.BYTE], source=self.driver, tag=PLAN_TAG)
        return pickle.loads(buf)

    def flush(self) -> None:
        MPI.Request.Waitall([req for req, _ in self._sends])
        self._sends = []

    def barrier(self) -> None:
        poll_barrier(self.active, self.poll_s)

    def agree_min(self, value: int) -> int:
        """The smallest ``value`` over every active rank."""
        return int(self.active.allreduce(int(value), op=MPI.MIN))


def poll_barrier(comm: object, poll_s: float) -> None:
    """A barrier that sleeps between polls instead of spinning (see module doc)."""
    req = comm.Ibarrier()
    while not req.Test():
        if poll_s:
            time.sleep(poll_s)


class LocalControl:
    """The control plane of a one-rank, one-stage run without MPI (tests, the benchmark's
    single-GPU case): the driver is alone, so there is nobody to message."""

    def __init__(self, groups: Groups, device: torch.device) -> None:
        self.groups, self.device, self.rank, self.driver = groups, device, groups.rank, groups.rank
        if len(groups.pipeline.gpus) != 1:
            raise ValueError("LocalControl runs single-GPU pipelines only")

    is_driver = True

    def send_plan(self, plan: object) -> None:
        pass

    def wait_device(self) -> None:
        pass

    def recv_plan(self) -> object:
        raise RuntimeError("a lone driver receives no plans")

    def flush(self) -> None:
        pass

    def barrier(self) -> None:
        pass

    def agree_min(self, value: int) -> int:
        return int(value)
