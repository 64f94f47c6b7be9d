"""The kernels' code fingerprint: blind to docstrings, comments and formatting, not to
code or the GEMV table."""

from __future__ import annotations

import shutil
from pathlib import Path

from twinfer import fingerprint as fp


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "kernels"
    root.mkdir()
    for path in list(fp.HERE.glob("*.py")) + list(fp.HERE.glob("*.json")):
        shutil.copy(path, root / path.name)
    return root


def _fingerprint(root: Path) -> str:
    return fp.kernels_fingerprint.__wrapped__(root)


def test_the_fingerprint_follows_code_not_prose(tmp_path):
    root = _copy(tmp_path)
    base = _fingerprint(root)
    assert base == fp.kernels_fingerprint() and len(base) == 12
    tuning = root / "decode_tuning.py"
    text = tuning.read_text()
    tuning.write_text(text.replace('"""Launch configuration', '"""Reworded: launch '
                                   'configuration', 1) + "\n# a comment\n")
    assert _fingerprint(root) == base  # docstring, comment, blank line
    tuning.write_text(text.replace("ctas_per_sm: int = 3", "ctas_per_sm: int = 4", 1))
    assert _fingerprint(root) != base  # a heuristic's constant
    tuning.write_text(text)
    (root / "gemv_tables.json").write_text("{}")
    assert _fingerprint(root) != base  # the GEMV table
    (root / "gemv_tables.json").unlink()
    shutil.copy(fp.HERE / "gemv_tables.json", root / "gemv_tables.json")
    (root / "bench.py").write_text("x = 1\n")  # benchmarks do not count
    assert _fingerprint(root) == base
