"""The executor's host side: plan arrays to the device in one asynchronous copy
(twinfer.exec.staging) and GPU ranks pinned to a CPU core (twinfer.exec.rank.pin_core)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from twinfer.exec.staging import HostStaging


def _arrays(i: int) -> list[np.ndarray]:
    return [np.arange(5, dtype=np.int64) + i, np.full(3, -i, dtype=np.int32),
            np.arange(12, dtype=np.int32).reshape(3, 4) * i, np.zeros(0, dtype=np.int64)]


def _check(staged: list[torch.Tensor], arrays: list[np.ndarray]) -> None:
    for t, a in zip(staged, arrays, strict=True):
        assert t.shape == a.shape and t.cpu().numpy().dtype == a.dtype
        np.testing.assert_array_equal(t.cpu().numpy(), a)


def test_staging_on_cpu_wraps_the_arrays():
    staging = HostStaging(torch.device("cpu"))
    _check(staging.stage(*_arrays(3)), _arrays(3))
    region = torch.zeros(8, dtype=torch.uint8)
    staging.fill(region, lambda host: host.__setitem__(slice(None), 7))
    assert region.tolist() == [7] * 8


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_staging_keeps_every_step_its_own_data_while_the_gpu_lags():
    # the GPU is kept busy so that the copies queue up behind a spin; more steps are
    # staged than the ring holds, so buffers are reused while copies are pending
    staging = HostStaging(torch.device("cuda"))
    torch.cuda._sleep(50_000_000)
    staged = [staging.stage(*_arrays(i)) for i in range(20)]
    region = torch.zeros(32, dtype=torch.uint8, device="cuda")
    staging.fill(region, lambda host: host.__setitem__(slice(None), 9))
    torch.cuda.synchronize()
    for i, tensors in enumerate(staged):
        _check(tensors, _arrays(i))
    assert region.tolist() == [9] * 32


def test_gpu_ranks_pin_to_one_core_unless_bound_or_told_not_to(monkeypatch):
    import os

    from twinfer.exec import rank
    from twinfer.spec import SpecError

    calls = []
    monkeypatch.setattr(os, "sched_setaffinity", lambda pid, cores: calls.append(cores))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.delenv(rank.PIN_CORE_ENV, raising=False)
    assert rank.pin_core(3) == 3 and calls == [{3}]
    monkeypatch.setenv(rank.PIN_CORE_ENV, "5,7")
    assert rank.pin_core(1) == 7
    monkeypatch.setenv(rank.PIN_CORE_ENV, "off")
    assert rank.pin_core(0) is None
    monkeypatch.setenv(rank.PIN_CORE_ENV, "auto")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {2, 3})  # bound by mpirun
    assert rank.pin_core(0) is None and calls == [{3}, {7}]
    monkeypatch.setenv(rank.PIN_CORE_ENV, "first")
    with pytest.raises(SpecError, match="TWINFER_PIN_CORE"):
        rank.pin_core(0)
    monkeypatch.setenv(rank.PIN_CORE_ENV, "9")  # not a core this process may use
    with pytest.raises(SpecError, match="core 9 is not one"):
        rank.pin_core(0)


def test_decode_graph_inputs_fill_their_one_region_with_padding():
    # the graph's positions, slots, lengths and block table are views of one region,
    # filled from one host image: the plan's rows, then padding rows (slot -1, length 0)
    import types

    from twinfer.exec.graphs import DecodeGraphs

    cache = types.SimpleNamespace(storage=torch.zeros(1))
    graphs = DecodeGraphs(None, cache, 5, [1, 2, 4], True, HostStaging(torch.device("cpu")))
    plan = types.SimpleNamespace(batch=2, positions=np.array([3, 9]), slots=np.array([7, 8]),
                                 seq_lens=np.array([4, 10], dtype=np.int32),
                                 block_table=np.arange(10, dtype=np.int32).reshape(2, 5))
    graphs.staging.fill(graphs.region, lambda host: graphs._write(host, plan))
    assert graphs.positions.tolist() == [3, 9, 0, 0]
    assert graphs.slots.tolist() == [7, 8, -1, -1]
    assert graphs.seq_lens.tolist() == [4, 10, 0, 0]
    assert graphs.table.tolist() == [list(range(5)), list(range(5, 10)), [0] * 5, [0] * 5]


def test_the_heap_is_settled_and_collections_are_clocked():
    """Before a serve the heap is collected and frozen (a later full collection walks
    none of it); the step records' GC fields come from a clock on ``gc.callbacks``."""
    import gc

    from twinfer.exec.engine import GcClock, settle_heap

    keep = [[i] for i in range(50_000)]  # a heap for the collector to walk
    settle_heap()
    assert gc.get_freeze_count() >= len(keep)
    clock = GcClock()
    try:
        gc.collect()
        gc.collect(0)
        got = clock.delta()
        assert got["gc_collections"] == 2 and got["gc_full"] == 1 and got["gc_s"] > 0
        assert clock.delta() == {"gc_s": 0.0, "gc_collections": 0, "gc_full": 0}
    finally:
        clock.close()
    assert clock._callback not in gc.callbacks


def test_the_steal_clock_reads_the_bound_cpu(tmp_path, monkeypatch):
    """The hypervisor's steal column of /proc/stat (clock ticks), for the CPU the rank
    is bound to, or for all of them when it is not; None without /proc/stat."""
    import os

    from twinfer.exec.engine import StealClock

    stat = tmp_path / "stat"
    stat.write_text("cpu  10 0 5 900 0 0 0 40 0 0\ncpu3 2 0 1 200 0 0 0 7 0 0\n")
    monkeypatch.setattr(StealClock, "STAT", stat)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    clock = StealClock()
    assert clock.read() == 7 * clock.tick_s
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert StealClock().read() == 40 * clock.tick_s
    monkeypatch.setattr(StealClock, "STAT", tmp_path / "missing")
    assert StealClock().read() is None


def test_the_jit_clock_counts_triton_compiles_and_keeps_earlier_hooks():
    """Triton calls ``knobs.runtime.jit_cache_hook`` before compiling a specialization
    and ``jit_post_compile_hook`` after; the clock times what lies between, names the
    kernel, passes both calls on to hooks set before it, and puts them back."""
    from types import SimpleNamespace

    knobs = pytest.importorskip("triton").knobs
    from twinfer.exec.engine import JitClock

    seen = []
    knobs.runtime.jit_cache_hook = lambda **kw: seen.append("before") or None
    knobs.runtime.jit_post_compile_hook = lambda **kw: seen.append("after")
    before, after = knobs.runtime.jit_cache_hook, knobs.runtime.jit_post_compile_hook
    try:
        with JitClock() as clock:
            assert clock.delta() == {"jit_s": 0.0, "jit_compiles": 0}
            for name in ("_prefill_kernel", "_rope_kernel"):
                assert knobs.runtime.jit_cache_hook(key=name, repr=name) is None
                knobs.runtime.jit_post_compile_hook(key=name, fn=SimpleNamespace(name=name))
            got = clock.delta()
            assert got["jit_compiles"] == 2 and got["jit_s"] >= 0
            assert got["jit_kernels"] == ["_prefill_kernel", "_rope_kernel"]
            assert clock.delta() == {"jit_s": 0.0, "jit_compiles": 0}
        assert seen == ["before", "after"] * 2
        assert knobs.runtime.jit_cache_hook is before
        assert knobs.runtime.jit_post_compile_hook is after
    finally:
        knobs.runtime.jit_cache_hook = knobs.runtime.jit_post_compile_hook = None


@pytest.mark.gpu
def test_the_jit_clock_sees_a_real_compile():
    """A specialization first used inside the clock is counted, a second launch is not."""
    import triton
    import triton.language as tl

    from twinfer.exec.engine import JitClock

    @triton.jit
    def fill(out, value, N: tl.constexpr):
        tl.store(out + tl.arange(0, N), tl.full((N,), value, tl.float32))

    out = torch.zeros(64, device="cuda")
    with JitClock() as clock:
        fill[(1,)](out, 3.0, N=64)
        torch.cuda.synchronize()
        first = clock.delta()
        fill[(1,)](out, 4.0, N=64)
        torch.cuda.synchronize()
        second = clock.delta()
    assert first["jit_compiles"] == 1 and first["jit_s"] > 0
    assert first["jit_kernels"][0].endswith("fill")  # the qualified name
    assert second["jit_compiles"] == 0
    assert out[0].item() == 4.0
