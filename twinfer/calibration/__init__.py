"""Calibration: microbenchmarks on the visible device, fits, and the shipped profiles.

``twinfer calibrate`` sweeps GEMM, decode and prefill attention, element-wise ops and
collectives (``sweep_compute``, ``sweep_comm``), fits alpha-beta lines and curve
quality (``fit``), and writes a profile JSON that the twin's cost model reads
(``twinfer.sim.profile``). ``profiles/`` holds the measured profiles that ship as the
embedded default.

This package's ``__init__`` imports nothing heavy: the twin reads ``profiles/``
without torch, so torch is imported only by the modules that time kernels.
"""

from __future__ import annotations

from pathlib import Path

PROFILES_DIR = Path(__file__).resolve().parent / "profiles"

__all__ = ["PROFILES_DIR"]
