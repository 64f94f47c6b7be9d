"""Suite-wide setup: how Triton kernels are decorated on a machine without CUDA.

Triton decides when a ``@triton.jit`` function is decorated whether it is compiled or
interpreted, and an interpreted kernel cannot call compiled ``@triton.jit`` helpers.
So on a CPU-only machine every kernel module is imported once here, under
``TRITON_INTERPRET=1``, whichever test module would have imported it first; then the
variable is put back, so that the executor and calibration tests run the torch
reference paths (``backend="auto"`` picks them for CPU tensors) rather than the
interpreter. The kernel tests switch the interpreter on for themselves
(tests/kernels/conftest.py).

Tests marked ``gpu`` (``multigpu``) are skipped where there is no CUDA GPU (fewer than
two), in every directory.
"""

import importlib
import os
import pkgutil

import pytest

try:
    import torch
except ImportError:  # the twin's tests run without torch
    torch = None

if torch is not None and not torch.cuda.is_available():
    _before = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import twinfer.kernels

        for _mod in pkgutil.iter_modules(twinfer.kernels.__path__):
            importlib.import_module(f"twinfer.kernels.{_mod.name}")
    except ImportError:  # triton absent: the kernel tests skip
        pass
    finally:
        if _before is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = _before


def pytest_collection_modifyitems(config, items):
    gpus = torch.cuda.device_count() if torch is not None and torch.cuda.is_available() else 0
    for item in items:
        if "gpu" in item.keywords and gpus < 1:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if "multigpu" in item.keywords and gpus < 2:
            item.add_marker(pytest.mark.skip(reason="needs two or more CUDA GPUs"))
