"""Backend resolution, and the import boundary of twinfer.kernels."""

import ast
import os
import pathlib
import subprocess
import sys

import pytest
import torch

import twinfer.kernels as kernels
from twinfer.kernels import backend, flash_decode, use_triton


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


def _fake_kernel(calls: list, arg_names: list[str]):
    """A JIT-function stand-in whose launches append ("jit", grid, args, kwargs) to
    ``calls`` and return a compiled stand-in whose runner appends ("fast", grid,
    params)."""

    class Compiled:
        packed_metadata = object()

        def __getitem__(self, grid):
            return lambda *params: calls.append(("fast", grid, params))

    class Kernel:
        def __init__(self, names=arg_names):
            self.arg_names = names

        def __getitem__(self, grid):
            def run(*args, **kwargs):
                calls.append(("jit", grid, args, kwargs))
                return Compiled()
            return run

    return Kernel


def test_launch_fast_path_passes_every_parameter_in_order(monkeypatch):
    # After the first (regular) launch, `launch` calls the compiled kernel directly with
    # the runtime arguments followed by the constexprs in signature order.
    calls = []
    Kernel = _fake_kernel(calls, ["x_ptr", "n", "BLOCK", "FLAG"])

    monkeypatch.setattr(backend, "interpreting", lambda: False)
    monkeypatch.setattr(backend, "launchable", lambda kernel: kernel)
    monkeypatch.setattr(backend, "_compiled", {})
    kernel, constexprs = Kernel(), (("FLAG", True), ("BLOCK", 64), ("num_warps", 4))
    backend.launch(kernel, (3,), ("x", 7), constexprs, key="k")
    backend.launch(kernel, (5,), ("y", 7), constexprs, key="k")
    assert calls == [
        ("jit", (3,), ("x", 7), {"FLAG": True, "BLOCK": 64, "num_warps": 4}),
        ("fast", (5, 1, 1), ("y", 7, 64, True)),  # the compiled runner needs a 3-d grid
    ]
    assert backend.arg_key((torch.zeros(2), 16, 0.5)) == (
        (torch.float32, torch.device("cpu"), True), 16, float)


def test_launch_direct_path_calls_the_launcher_without_hooks(monkeypatch):
    # A compiled kernel exposing Triton 3.x's launcher: after the first launch, `launch`
    # calls it with the current stream, the kernel handle, its packed metadata and no
    # launch metadata or hooks, then the runtime arguments and the constexprs in order.
    calls = []

    class Compiled:
        packed_metadata, function = ("meta",), "handle"

        def run(self, *params):
            calls.append(("direct", params))

    class Kernel:
        arg_names = ["x_ptr", "n", "BLOCK"]

        def __getitem__(self, grid):
            def run(*args, **kwargs):
                calls.append(("jit", grid, args))
                return Compiled()
            return run

    monkeypatch.setattr(backend, "interpreting", lambda: False)
    monkeypatch.setattr(backend, "launchable", lambda kernel: kernel)
    monkeypatch.setattr(backend, "_compiled", {})
    monkeypatch.setattr(backend, "_raw_stream", lambda: 1234)
    kernel, constexprs = Kernel(), (("BLOCK", 64), ("num_warps", 4))
    backend.launch(kernel, (3,), ("x", 7), constexprs, key="k")
    backend.launch(kernel, (5, 2), ("y", 8), constexprs, key="k")
    assert calls == [
        ("jit", (3,), ("x", 7)),
        ("direct", (5, 2, 1, 1234, "handle", ("meta",), None, None, None, "y", 8, 64)),
    ]


def test_decode_launch_key_separates_dtypes():
    # Same shapes, different dtype: two compiled kernels, never one reused for the other.
    from twinfer.kernels.decode import _launch_key, _plan

    keys = set()
    for dtype in (torch.float16, torch.bfloat16):
        q = torch.zeros(2, 8, 64, dtype=dtype)
        k = torch.zeros(2, 2, 32, 64, dtype=dtype)
        lens = torch.zeros(2, dtype=torch.int32)
        plan = _plan(2, 1, 8, 2, 64, 32, dtype, 0, 1, None, 132, False)
        keys.add(_launch_key(plan, (1, 2, 3, 4, 5, 6, 0), q, k, k, lens, lens, False))
    assert len(keys) == 2


def test_pdl_kernels_launch_with_it_only_inside_the_scope(monkeypatch):
    # TWINFER_PDL=graphs: a kernel declaring PDL gets PDL=0 outside `pdl_scope` and the
    # trigger's value plus Triton's launch_pdl option inside it, each a compiled kernel
    # of its own; "off" never sets it; kernels without the parameter never see it.
    calls = []
    Kernel = _fake_kernel(calls, [])

    monkeypatch.setattr(backend, "interpreting", lambda: False)
    monkeypatch.setattr(backend, "launchable", lambda kernel: kernel)
    monkeypatch.setattr(backend, "_compiled", {})
    monkeypatch.setattr(backend, "_pdl_device", lambda: True)
    monkeypatch.setattr(backend, "PDL_MODE", "graphs")
    monkeypatch.setattr(backend, "PDL_TRIGGER", backend.PDL_TRIGGERS["start"])
    pdl_kernel, plain = Kernel(["x_ptr", "BLOCK", "PDL"]), Kernel(["x_ptr", "BLOCK"])
    constexprs = (("BLOCK", 64), ("num_warps", 4))
    backend.launch(pdl_kernel, (1,), ("x",), constexprs, key="k")
    with backend.pdl_scope():
        assert backend.pdl_active()
        backend.launch(pdl_kernel, (1,), ("x",), constexprs, key="k")
        backend.launch(pdl_kernel, (1,), ("x",), constexprs, key="k")  # compiled: fast
        backend.launch(plain, (1,), ("x",), constexprs, key="p")
    assert not backend.pdl_active()
    backend.launch(pdl_kernel, (1,), ("x",), constexprs, key="k")  # compiled: fast
    assert calls == [
        ("jit", (1,), ("x",), {"BLOCK": 64, "num_warps": 4, "PDL": 0}),
        ("jit", (1,), ("x",), {"BLOCK": 64, "num_warps": 4, "PDL": 1, "launch_pdl": True}),
        ("fast", (1, 1, 1), ("x", 64, 1)),
        ("jit", (1,), ("x",), {"BLOCK": 64, "num_warps": 4}),
        ("fast", (1, 1, 1), ("x", 64, 0)),
    ]
    monkeypatch.setattr(backend, "PDL_MAX_BATCH", 8)
    with backend.pdl_scope(16):  # a graph over the batch limit: no PDL
        assert not backend.pdl_active()
    with backend.pdl_scope(8):
        assert backend.pdl_active()
    monkeypatch.setattr(backend, "PDL_MODE", "off")
    with backend.pdl_scope():
        assert not backend.pdl_active()
    monkeypatch.setattr(backend, "PDL_MODE", "on")
    assert backend.pdl_active()
    monkeypatch.setattr(backend, "interpreting", lambda: True)
    assert not backend.pdl_active()  # the CPU interpreter has no grid dependencies


def test_unknown_pdl_settings_are_clear_errors():
    for name, value, message in [
            ("TWINFER_PDL", "maybe", "TWINFER_PDL='maybe' is not valid — use one of graphs, "
                                     "on, off"),
            ("TWINFER_PDL_TRIGGER", "late", "use one of start, end, exit"),
            ("TWINFER_PDL_MAX_BATCH", "0", "TWINFER_PDL_MAX_BATCH='0' is not valid — give a "
                                           "batch size >= 1"),
            ("TWINFER_LAUNCH", "fast", "TWINFER_LAUNCH='fast' is not valid — use one of "
                                       "direct, runner, triton")]:
        proc = subprocess.run([sys.executable, "-c", "import twinfer.kernels.backend"],
                              env={**os.environ, name: value}, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode != 0
        assert message in proc.stderr
