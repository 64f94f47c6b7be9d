"""The MPI control plane: step plans from a pipeline's driver, agreement, barriers.

Tensors travel over torch.distributed; everything else travels here, over MPI: the
driver (the last stage's leader) pickles each `Plan` once and posts a non-blocking
send to every other rank of its pipeline, which receive plans in order. Sends never
wait for the receiver, so the driver can keep ``micro_batches`` plans in flight.

Receivers poll (``Iprobe``) rather than block in ``Recv``: on a GPU they spin (a plan's
latency is on the critical path of every decode step); on CPU they sleep between polls
so that oversubscribed ranks (tests run 4 ranks on 2 cores) leave the cores to the
ranks that compute.

A plan larger than the transport's eager limit goes by rendezvous: the receiver's
``Recv`` completes only while the *sender* calls into MPI. The driver spends its time
in CUDA syncs and collectives, not in MPI, so a thread of the driver's (`_SendProgress`)
completes the posted sends. Without it a TP group deadlocks: the driver waits in an
all-reduce for a follower that waits in ``Recv`` for the driver's plan. Seen on two
H200s (Open MPI 4.1.6, no single-copy shared-memory transport) and reproduced on CPU
over Open MPI's TCP transport (tests/exec/test_faults.py).
"""

from __future__ import annotations

import pickle
import threading
import time

import torch

from twinfer.exec.groups import Groups

try:
    from mpi4py import MPI
except ImportError:  # LocalControl needs no MPI
    MPI = None

PLAN_TAG = 7
CPU_POLL_S = 2e-4


class _SendProgress(threading.Thread):
    """Completes the driver's posted plan sends in the background (see module doc).

    The thread owns the requests once posted. On a GPU it blocks in ``Waitall``
    (mpi4py releases the GIL there); on CPU it tests and sleeps between tests, so that
    oversubscribed ranks keep the cores. Needs MPI_THREAD_MULTIPLE (mpi4py's default).
    """

    def __init__(self, poll_s: float) -> None:
        super().__init__(name="twinfer-plan-sends", daemon=True)
        self.poll_s = poll_s
        self._cv = threading.Condition()
        self._pending: list[tuple[object, bytes]] = []  # (MPI request, the bytes it sends)
        self._busy = False
        self.start()

    def post(self, req: object, data: bytes) -> None:
        with self._cv:
            self._pending.append((req, data))
            self._cv.notify_all()

    def run(self) -> None:
        while True:
            with self._cv:
                while not self._pending:
                    self._cv.wait()
                batch, self._pending, self._busy = self._pending, [], True
            reqs = [req for req, _ in batch]
            if self.poll_s:
                while not MPI.Request.Testall(reqs):
                    time.sleep(self.poll_s)
            else:
                MPI.Request.Waitall(reqs)
            with self._cv:
                self._busy = False
                self._cv.notify_all()

    def flush(self) -> None:
        """Wait until every posted send has completed."""
        with self._cv:
            while self._pending or self._busy:
                self._cv.wait()


class ControlPlane:
    """MPI messaging of one active rank. ``active`` spans every rank of the placement."""

    def __init__(self, world: object, active: object, groups: Groups,
                 device: torch.device) -> None:
        self.world, self.active, self.groups, self.device = world, active, groups, device
        self.rank = groups.rank
        self.driver = groups.driver
        self.followers = [r for r in groups.pipeline.gpus if r != groups.driver]
        self.poll_s = 0.0 if device.type == "cuda" else CPU_POLL_S
        self._progress: _SendProgress | None = None
        if self.is_driver and self.followers:
            if MPI.Query_thread() < MPI.THREAD_MULTIPLE:
                raise RuntimeError(
                    "the executor needs MPI_THREAD_MULTIPLE (the driver completes its plan "
                    "sends in a thread): use an MPI built with thread support")
            self._progress = _SendProgress(self.poll_s)

    @property
    def is_driver(self) -> bool:
        return self.rank == self.driver

    def send_plan(self, plan: object) -> None:
        """Driver: post ``plan`` (None: stop) to every other rank of the pipeline."""
        if self._progress is None:
            return
        data = pickle.dumps(plan, protocol=pickle.HIGHEST_PROTOCOL)
        for r in self.followers:
            self._progress.post(self.world.Isend([data, MPI.BYTE], dest=r, tag=PLAN_TAG), data)

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
        """Driver: wait until the followers hold every plan sent."""
        if self._progress is not None:
            self._progress.flush()

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

    def recv_plan(self) -> object:
        raise RuntimeError("a lone driver receives no plans")

    def flush(self) -> None:
        pass

    def barrier(self) -> None:
        pass

    def agree_min(self, value: int) -> int:
        return int(value)
