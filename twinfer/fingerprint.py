"""Which build of the kernels measured something: a short hash of their code.

A calibration profile's kernel samples describe the kernels as they were when swept; a
later change to a kernel, its launch heuristics or the GEMV table makes them stale
without any error (the fifth session found the shipped H100 decode-attention samples
22.5 us at 4K where the current kernel sweeps at 19.4 us). The profile records this
fingerprint per op section and the executor's results record it too, so that
`twinfer compare` can say when the two differ. The hash is over each module's syntax
tree without docstrings (comments and formatting do not count) and the GEMV table's
bytes. The tree is written out without the fields a node leaves empty, so that the
same code hashes the same under every Python (``ast.dump`` differs: 3.12 added an
empty ``type_params`` to each function, 3.13 omits empty fields; the device machines
run 3.12). Standard library only, outside the kernels package (whose import loads torch and
Triton), so the twin can check a profile without them.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

HERE = Path(__file__).parent / "kernels"
SKIP = {"bench.py", "bench_ops.py"}  # the kernels' benchmarks


def _code(source: str) -> str:
    """The module's syntax tree with its docstrings dropped, as text."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return _canonical(tree)


def _canonical(node: object) -> str:
    """``node`` as text: each syntax node's type and its non-empty fields, recursively
    (fields a newer Python added are empty on code that does not use them)."""
    if isinstance(node, ast.AST):
        fields = ", ".join(f"{name}={_canonical(value)}" for name, value in ast.iter_fields(node)
                           if value is not None and value != [])
        return f"{type(node).__name__}({fields})"
    if isinstance(node, list):
        return f"[{', '.join(_canonical(item) for item in node)}]"
    return repr(node)


@functools.cache
def kernels_fingerprint(root: Path = HERE) -> str:
    """12 hex digits identifying the kernels' code and tables under ``root``."""
    digest = hashlib.sha256()
    for path in sorted(root.glob("*.py")):
        if path.name not in SKIP:
            digest.update(path.name.encode())
            digest.update(_code(path.read_text()).encode())
    for path in sorted(root.glob("*.json")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]
