"""Backend resolution, and the import boundary of twinfer.kernels."""

import ast
import pathlib

import pytest
import torch

import twinfer.kernels as kernels
from twinfer.kernels import flash_decode, use_triton


def test_auto_on_cpu_follows_interpreter_flag(monkeypatch):
    x = torch.zeros(1)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not use_triton("auto", x)
    with pytest.raises(ValueError, match="needs CUDA"):
        use_triton("triton", x)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert use_triton("auto", x) and use_triton("triton", x)
    assert not use_triton("torch", x)


def test_torch_backend_on_cpu_without_interpreter(monkeypatch, gen):
    # What the executor gets on a CPU-only rank: the vectorized references.
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q = torch.randn((2, 8, 64), generator=gen)
    k = torch.randn((2, 2, 30, 64), generator=gen)
    seq_lens = torch.tensor([30, 4], dtype=torch.int32)
    out, lse = flash_decode(q, k, k, seq_lens)
    assert out.shape == q.shape and lse.shape == (2, 8)


def test_kernels_import_no_distributed_or_scenario_code():
    root = pathlib.Path(kernels.__file__).parent
    banned = ("torch.distributed", "mpi4py", "twinfer.exec", "twinfer.spec", "twinfer.sim")
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert not name.startswith(banned), f"{path.name} imports {name}"
