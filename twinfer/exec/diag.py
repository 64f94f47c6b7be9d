"""Diagnostics of a multi-rank run: ``TWINFER_DEBUG=1`` makes every rank say what it does.

Each phase a rank enters (device choice, torch.distributed init, groups, weights,
memory probe, KV sizing, graph capture, every step) is printed on stderr as
``[twinfer r<rank> +<seconds>s] <phase>`` and flushed at once, so that the last line of
each rank in a hung job names where it stopped. Off by default: one environment read.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

DEBUG_ENV = "TWINFER_DEBUG"
_T0 = time.perf_counter()


DUMP_ENV = "TWINFER_DEBUG_DUMP_S"  # with TWINFER_DEBUG: dump every thread's stack then


def arm_stack_dump() -> None:
    """With ``TWINFER_DEBUG_DUMP_S=S`` set, every rank prints all its threads' Python
    stacks after S seconds if it is still running (where a hung rank waits)."""
    seconds = float(os.environ.get(DUMP_ENV, "0") or 0)
    if seconds > 0:
        import faulthandler

        faulthandler.dump_traceback_later(seconds, exit=False)


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "0") not in ("", "0")


def phase(rank: int, what: str) -> None:
    """Print ``what`` for ``rank`` (when debugging), flushed."""
    if debugging():
        sys.stderr.write(f"[twinfer r{rank} +{time.perf_counter() - _T0:.2f}s] {what}\n")
        sys.stderr.flush()


def warn(rank: int, what: str) -> None:
    """Always printed: something every rank's log should show (e.g. a failed capture)."""
    sys.stderr.write(f"[twinfer r{rank}] warning: {what}\n")
    sys.stderr.flush()


PROFILE_ENV = "TWINFER_PROFILE_DIR"  # per-op profile of the run, one table per rank


@contextmanager
def op_profile(rank: int):
    """With ``TWINFER_PROFILE_DIR=D`` set, profile what the block runs (torch.profiler,
    CPU and CUDA) and write rank ``rank``'s operators, sorted by device time, to
    ``D/rank<rank>.txt``: which kernels a step's time goes to."""
    out_dir = os.environ.get(PROFILE_ENV)
    if not out_dir:
        yield
        return
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        yield
    sort = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=40, max_name_column_width=70)
    path = Path(out_dir) / f"rank{rank}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(table)
