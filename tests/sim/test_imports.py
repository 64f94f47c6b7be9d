"""The twin installs and runs without the GPU stack: spec/ and sim/ import no torch,
triton, MPI or streamlit (../shared/DESIGN.md, dependencies point one way)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import twinfer

FORBIDDEN = {"torch", "triton", "mpi4py", "streamlit"}
ROOT = Path(twinfer.__file__).parent


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_no_gpu_stack_in_spec_and_sim_sources():
    offenders = {}
    for package in ("spec", "sim"):
        for path in sorted((ROOT / package).glob("*.py")):
            bad = imported_modules(path) & FORBIDDEN
            if bad:
                offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert not offenders


def test_importing_the_twin_loads_no_gpu_stack():
    code = ("import sys, twinfer.sim, twinfer.sim.fast, twinfer.sim.bench, twinfer.spec; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
