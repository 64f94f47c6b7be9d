"""What was measured on: device, driver and library versions, and the link between GPUs."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import shutil
import socket
import subprocess
from pathlib import Path

import torch

from twinfer.calibration.timing import cache_bytes


def _run(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        return ""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _mem_total_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _versions() -> dict[str, str]:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = ""
    nccl = ""
    if torch.cuda.is_available():
        try:
            nccl = ".".join(str(v) for v in torch.cuda.nccl.version())
        except (AttributeError, RuntimeError):
            nccl = ""
    return {"torch": torch.__version__, "triton": triton_version, "nccl": nccl,
            "cuda": torch.version.cuda or ""}


def device_info(device: str) -> dict[str, object]:
    """The profile's ``device`` section for the device this process sees."""
    common = {**_versions(), "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
              "host": socket.gethostname()}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        driver = _run(["nvidia-smi", "--query-gpu=driver_version",
                       "--format=csv,noheader"]).strip().splitlines()
        return {"name": props.name, "memory_bytes": int(props.total_memory),
                "sm_count": int(props.multi_processor_count),
                "l2_bytes": cache_bytes(torch.device("cuda", 0)),
                "driver": driver[0] if driver else "", **common}
    return {"name": _cpu_name(), "memory_bytes": _mem_total_bytes(),
            "sm_count": os.cpu_count() or 1, "l2_bytes": cache_bytes(torch.device("cpu")),
            "driver": platform.release(), **common}


def default_name(device: str) -> str:
    """A profile name for the visible device: ``h100-sxm``, ``h200-sxm``, ... or ``cpu``."""
    if device != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(0).lower()
    for gpu in ("h200", "h100", "a100", "l40s", "b200"):
        if gpu in name:
            form = "pcie" if "pcie" in name else "sxm"
            if gpu == "h100" and "nvl" in name:
                form = "nvl"
            return f"{gpu}-{form}"
    return re.sub(r"[^a-z0-9]+", "-", name).strip("-")


def link_kind(device: str, gpus: int) -> str:
    """How the visible GPUs talk: ``nvlink`` if GPU 0 and 1 are NVLink peers, else
    ``pcie``; ``shm`` between CPU processes on one host."""
    if device != "cuda" or gpus < 2:
        return "shm" if device != "cuda" else "nvlink"
    topo = _run(["nvidia-smi", "topo", "-m"])
    for line in topo.splitlines():
        cells = line.split()
        if cells and cells[0] == "GPU0" and len(cells) > 2:
            return "nvlink" if cells[2].startswith("NV") else "pcie"
    return "nvlink"
