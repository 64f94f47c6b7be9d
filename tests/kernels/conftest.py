"""Kernel tests: Triton's interpreter on CPU-only machines, the real GPU otherwise.

The kernels are decorated for the interpreter by tests/conftest.py; the fixture below
switches it on for each kernel test.
"""

import zlib

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()


@pytest.fixture(autouse=True)
def _interpret_without_cuda(monkeypatch):
    """Kernel tests run Triton's interpreter where there is no GPU (the kernels were
    decorated for it by tests/conftest.py); other tests keep the torch references."""
    if not HAS_CUDA:
        monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.fixture
def device():
    """Where the CPU-sized tests run: the GPU if there is one, else the interpreter."""
    return torch.device("cuda" if HAS_CUDA else "cpu")


@pytest.fixture
def gen(request):
    """A generator seeded from the test's id: fresh data per case, reproducible."""
    seed = zlib.crc32(request.node.nodeid.encode())
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def poison(monkeypatch):
    """Make torch.empty / empty_like return NaN-filled float tensors while the test
    runs, so an output element a kernel forgets to write shows up as NaN."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def _fill(t):
        if t.is_floating_point():
            t.fill_(float("nan"))
        return t

    monkeypatch.setattr(torch, "empty", lambda *a, **kw: _fill(real_empty(*a, **kw)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **kw: _fill(real_empty_like(*a, **kw)))


def error_vs_ref(kernel, torch_lowp, ref64, atol=1e-5, factor=2.0):
    """flash-attention's criterion: the kernel's max error against the float64
    reference is at most ``factor`` times torch's own error in the same low precision
    (plus ``atol``). Infinite reference entries must match exactly."""
    finite = torch.isfinite(ref64)
    assert torch.equal(torch.isfinite(kernel), finite), "non-finite entries differ"
    assert torch.equal(kernel[~finite].double(), ref64[~finite]), "infinities differ"
    err_kernel = (kernel.double() - ref64)[finite].abs().max().item() if finite.any() else 0.0
    err_torch = (torch_lowp.double() - ref64)[finite].abs().max().item() if finite.any() else 0.0
    assert err_kernel <= factor * err_torch + atol, (
        f"kernel error {err_kernel:.3g} > {factor} x torch error {err_torch:.3g} + {atol}"
    )
    return err_kernel, err_torch


@pytest.fixture
def close_to_ref():
    return error_vs_ref
