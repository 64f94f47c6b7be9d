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


def test_the_same_code_hashes_the_same_under_every_python():
    """The tree is written without empty fields: ``ast.dump`` gives another text on 3.12
    (an empty ``type_params`` on every function) than on 3.11 or 3.13, and the device
    machines run 3.12 where this one runs 3.11. The text below is what 3.11, 3.12 and
    3.13 all give."""
    import ast

    tree = ast.parse("def f(x, *, n: int = 2):\n    return x[n:] + 1.5")
    assert fp._canonical(tree) == (
        "Module(body=[FunctionDef(name='f', args=arguments(args=[arg(arg='x')], "
        "kwonlyargs=[arg(arg='n', annotation=Name(id='int', ctx=Load()))], "
        "kw_defaults=[Constant(value=2)]), body=[Return(value=BinOp(left=Subscript("
        "value=Name(id='x', ctx=Load()), slice=Slice(lower=Name(id='n', ctx=Load())), "
        "ctx=Load()), op=Add(), right=Constant(value=1.5)))])])")
