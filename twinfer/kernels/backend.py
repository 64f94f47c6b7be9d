"""Backend choice shared by every public op in `twinfer.kernels`.

Each op takes ``backend="auto" | "triton" | "torch"``:

- ``"triton"`` runs the Triton kernel (on CUDA tensors, or anywhere under Triton's
  interpreter, ``TRITON_INTERPRET=1``);
- ``"torch"`` runs the vectorized torch reference that lives next to the kernel;
- ``"auto"`` picks Triton for CUDA tensors and the torch reference for CPU tensors,
  unless ``TRITON_INTERPRET=1`` is set, in which case CPU tensors go through the
  interpreter too (that is how the CPU tests exercise the kernels).

Triton decides at decoration time whether a ``@triton.jit`` function is compiled or
interpreted. So that the import order of modules does not matter (a test suite may
import these kernels before it sets ``TRITON_INTERPRET``), `launchable` rewraps a
compiled kernel for the interpreter when interpretation is asked for at call time.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Literal

import torch
import triton
import triton.language as tl

Backend = Literal["auto", "triton", "torch"]
BACKENDS = ("auto", "triton", "torch")


def interpreting() -> bool:
    """True when Triton kernels run under the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(backend: Backend, tensor: torch.Tensor) -> bool:
    """Resolve ``backend`` for an op whose main input is ``tensor``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return False
    if backend == "triton":
        if not (tensor.is_cuda or interpreting()):
            raise ValueError(
                "backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1 for CPU tensors"
            )
        return True
    return tensor.is_cuda or interpreting()


def cdiv(a: int, b: int) -> int:
    """Ceiling division in plain Python (``triton.cdiv`` is a constexpr function in
    Triton 3.x: microseconds per host call on a decode step's launch path)."""
    return -(-a // b)


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (plain Python: ``triton.next_power_of_2`` costs
    microseconds per call, which add up in a decode step's launch path)."""
    return 1 << max(n - 1, 0).bit_length()


@functools.cache
def _interpreted(fn):
    from triton.runtime.interpreter import InterpretedFunction

    return InterpretedFunction(fn)


def launchable(kernel):
    """The kernel itself, or an interpreted twin of it when interpretation is on."""
    if interpreting() and hasattr(kernel, "fn") and type(kernel).__name__ == "JITFunction":
        return _interpreted(kernel.fn)
    return kernel


# Launch fast path. Triton's JITFunction launch re-binds and re-specializes every
# argument on each call, tens of microseconds of host time on a slow host: longer than
# a decode step's kernel at small batch and context. After the first launch of a given
# specialization, `launch` calls the compiled kernel's launcher itself: the current
# stream from torch, no launch hooks (Triton calls its two empty hook chains and builds
# a metadata dict per launch otherwise), the kernel's handle and packed metadata as
# Triton passes them (Triton 3.x: ``run(gx, gy, gz, stream, function, packed_metadata,
# launch_metadata, enter_hook, exit_hook, *args)``). The caller's ``key`` must capture
# everything Triton specializes on besides the constexprs: argument dtypes, 16-byte
# alignment of pointers, and integers equal to 1 or divisible by 16 (passing the
# integers themselves is simplest). ``TWINFER_LAUNCH=triton`` always takes Triton's
# path; ``TWINFER_LAUNCH=runner`` calls the compiled kernel's own runner (hooks and all).
LAUNCH_PATHS = ("direct", "runner", "triton")


class SwitchError(ValueError):
    """An environment switch of the kernels with a value it does not take: ``args`` are
    (variable, problem, fix), as the launcher reports it before any rank starts."""

    def __str__(self) -> str:
        name, problem, fix = self.args
        return f"{name}={problem} — {fix}"


def _env_choice(name: str, default: str, choices) -> str:
    value = os.environ.get(name, default).strip().lower() or default
    if value not in choices:
        raise SwitchError(name, f"{value!r} is not valid", f"use one of {', '.join(choices)}")
    return value


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    try:
        value = int(text) if text else default
    except ValueError:
        value = -1
    if value < 1:
        raise SwitchError(name, f"{text!r} is not valid", "give a batch size >= 1")
    return value


_LAUNCH = _env_choice("TWINFER_LAUNCH", "direct", LAUNCH_PATHS)
FAST_LAUNCH = _LAUNCH != "triton"
DIRECT_LAUNCH = _LAUNCH == "direct"
_compiled: dict = {}


def _raw_stream() -> int:
    return torch._C._cuda_getCurrentRawStream(torch._C._cuda_getDevice())


def _direct(compiled, tail: tuple):
    """A launcher calling ``compiled``'s Triton launcher with no hooks, or None where
    this Triton's compiled kernel does not look as expected (then its runner serves)."""
    run, function = getattr(compiled, "run", None), getattr(compiled, "function", None)
    meta = getattr(compiled, "packed_metadata", None)
    if not DIRECT_LAUNCH or run is None or function is None or meta is None:
        return None

    def go(grid: tuple, args: tuple) -> None:
        g = (*grid, 1, 1)
        run(g[0], g[1], g[2], _raw_stream(), function, meta, None, None, None, *args, *tail)

    return go


# Programmatic dependent launch (PDL, compute capability 9.0+). A kernel launched with
# it may start while the kernel before it on the stream is still finishing: its launch
# and prologue overlap the predecessor's tail, which in a decode step of several hundred
# short kernels is a visible share of the step. A kernel that takes part declares a
# ``PDL: tl.constexpr`` parameter and opens with `pdl_prologue`: wait for the
# predecessor's completion and memory (``griddepcontrol.wait``) before touching any
# memory; it lets its own dependents launch where ``TWINFER_PDL_TRIGGER`` says: after
# its last store (``end``, `pdl_epilogue`; the default), at its start (``start``), or
# when it exits (``exit``). ``TWINFER_PDL=graphs`` (the default) launches such kernels
# with PDL while the executor captures a decode graph (of at most
# ``TWINFER_PDL_MAX_BATCH`` sequences, default no limit), ``on`` everywhere, ``off``
# never. On an H100 (docs/BENCHMARKS.md, batch 1-16, contexts 512 and 4K) the decode
# graphs ran 1.9% faster on average with the ``end`` trigger (-5.1% to +0.7%); the
# ``start`` trigger, which lets dependents occupy the GPU's slots earliest, gained 2-4%
# at batch 1 but lost 3% at batch 16. Kernels without the parameter (cuBLAS, torch,
# NCCL) launch as always: a PDL kernel after one of them starts early and waits; one of
# them after a PDL kernel waits for its completion as for any kernel.
PDL_MODES = ("graphs", "on", "off")
PDL_TRIGGERS = {"start": 1, "end": 2, "exit": 3}  # the PDL constexpr's values (0: off)


PDL_MODE = _env_choice("TWINFER_PDL", "graphs", PDL_MODES)
PDL_TRIGGER = PDL_TRIGGERS[_env_choice("TWINFER_PDL_TRIGGER", "end", PDL_TRIGGERS)]
PDL_MAX_BATCH = _env_int("TWINFER_PDL_MAX_BATCH", 1 << 30)
_pdl_depth = 0


@functools.cache
def _pdl_device() -> bool:
    """Does the current CUDA device run programmatic dependent launches (sm_90+)?"""
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9


@contextlib.contextmanager
def pdl_scope(batch: int | None = None):
    """Launches inside the block use PDL where ``TWINFER_PDL`` allows it (``graphs``:
    the executor wraps the capture of a decode graph of ``batch`` sequences in this;
    a batch over ``TWINFER_PDL_MAX_BATCH`` gets none)."""
    global _pdl_depth
    on = batch is None or batch <= PDL_MAX_BATCH
    _pdl_depth += on
    try:
        yield
    finally:
        _pdl_depth -= on


def pdl_active() -> bool:
    """Would a kernel that supports PDL be launched with it now?"""
    if PDL_MODE == "off" or interpreting():
        return False
    return (PDL_MODE == "on" or _pdl_depth > 0) and _pdl_device()


@triton.jit
def pdl_prologue(PDL: tl.constexpr):
    """The first statement of a kernel taking part in PDL: wait until the kernels before
    it on the stream have completed and their writes are visible; with the ``start``
    trigger, then allow the next kernel to launch (it waits the same way). A no-op when
    ``PDL`` is 0."""
    if PDL > 0:
        tl.extra.cuda.gdc_wait()
    if PDL == 1:
        tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def pdl_epilogue(PDL: tl.constexpr):
    """The last statement of a kernel taking part in PDL: with the ``end`` trigger, allow
    the next kernel to launch now."""
    if PDL == 2:
        tl.extra.cuda.gdc_launch_dependents()


@functools.cache
def _takes_pdl(kernel) -> bool:
    return "PDL" in getattr(kernel, "arg_names", ())


def launch(kernel, grid, args: tuple, constexprs: tuple, key) -> None:
    """``kernel[grid](*args, **dict(constexprs))``: ``args`` are the kernel's leading
    runtime parameters in order, ``constexprs`` (name, value) pairs for the rest (plus
    num_warps / num_stages). A kernel with a ``PDL`` parameter gets it here (see
    `pdl_scope`), with Triton's ``launch_pdl`` option when set."""
    if _takes_pdl(kernel):
        pdl = PDL_TRIGGER if pdl_active() else 0
        key = (key, pdl)
        constexprs = (*constexprs, ("PDL", pdl)) + ((("launch_pdl", True),) if pdl else ())
    entry = _compiled.get(key) if FAST_LAUNCH else None
    if entry is not None:
        entry(grid, args)
        return
    constexprs = dict(constexprs)
    compiled = launchable(kernel)[grid](*args, **constexprs)
    if FAST_LAUNCH and not interpreting() and hasattr(compiled, "packed_metadata"):
        tail = tuple(constexprs[name] for name in kernel.arg_names[len(args):])
        direct = _direct(compiled, tail)
        if direct is None:
            def direct(grid: tuple, args: tuple, compiled=compiled, tail=tail) -> None:
                compiled[(*grid, 1, 1)[:3]](*args, *tail)  # the runner wants 3 dims
        _compiled[key] = direct


def arg_key(args: tuple) -> tuple:
    """A `launch` key covering what Triton specializes on for these runtime arguments:
    each tensor's dtype, device and 16-byte alignment, each integer's value."""
    return tuple((a.dtype, a.device, a.data_ptr() % 16 == 0) if isinstance(a, torch.Tensor)
                 else a if isinstance(a, int) else type(a) for a in args)


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of ``device``; a notional 8 for CPU (interpreter) runs."""
    if device.type != "cuda":
        return 8
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _sm_count(index)
