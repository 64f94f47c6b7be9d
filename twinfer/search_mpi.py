"""Layout search over the ranks of an MPI job, through ``mpi4py.futures``.

``mpirun -np N twinfer search SCENARIO ...``: every rank enters `mpi_pool`; rank 0
gets an executor whose workers are the other N - 1 ranks and runs the search
(``twinfer.sim.search``); the others serve candidate chunks until rank 0 is done and
get ``None``. This module lives outside ``twinfer.sim`` so that the twin never
imports MPI; mpi4py is imported only when a search actually runs under mpirun.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import contextmanager

MPI_SIZE_ENV = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")


def under_mpirun() -> bool:
    """True inside an MPI job of more than one rank."""
    return any(int(os.environ.get(name, "1")) > 1 for name in MPI_SIZE_ENV)


@contextmanager
def mpi_pool() -> Iterator[Executor | None]:
    """The MPI executor on rank 0, None on the worker ranks (after they have served)."""
    from mpi4py import MPI
    from mpi4py.futures import MPICommExecutor

    with MPICommExecutor(MPI.COMM_WORLD, root=0) as executor:
        yield executor


def run_search(scenario_source: str, opts, gpus: str | None = None,
               out: str | None = None) -> None:
    """What ``twinfer search`` does: load, search (over MPI ranks under mpirun, else
    local processes), print the Pareto front, write the chosen scenario."""
    from rich.console import Console

    from twinfer.sim.search import on_cluster, parse_gpus, search
    from twinfer.sim.search_report import print_search, write_chosen
    from twinfer.spec import load_scenario

    console = Console()
    scenario = load_scenario(scenario_source)
    if gpus:
        scenario = on_cluster(scenario, parse_gpus(gpus))

    def report(result) -> None:
        print_search(console, result)
        if out:
            command = write_chosen(result, out)
            console.print(f"wrote {out}\nexecute it with:\n  {command}", highlight=False)

    if under_mpirun():
        with mpi_pool() as executor:
            if executor is not None:  # rank 0; the others served the chunks
                report(search(scenario, opts, executor, progress=console.print))
        return
    report(search(scenario, opts, progress=console.print))
