"""The skinny decode GEMM against an fp32 reference, and the dispatch around it."""

import json

import pytest
import torch
import torch.nn.functional as F

from twinfer.kernels import gemv
from twinfer.kernels.gemv import GemvConfig, linear, linear_ref, skinny_linear

CONFIGS = [GemvConfig(block_n=16, block_k=64, split_k=1),
           GemvConfig(block_n=32, block_k=32, split_k=3),
           GemvConfig(block_n=16, block_k=64, fma=True),
           GemvConfig(block_n=16, block_k=32, split_k=2, fma=True)]


@pytest.mark.parametrize("m", [1, 3, 16])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"n{c.block_n}k{c.block_k}"
                         f"s{c.split_k}{'fma' if c.fma else 'dot'}")
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_skinny_linear_matches_the_reference(m, config, dtype, device, gen):
    n, k = 72, 200  # neither a multiple of the blocks
    x = torch.randn((m, k), generator=gen).to(device, dtype)
    w = torch.randn((n, k), generator=gen).to(device, dtype) / k**0.5
    out = skinny_linear(x, w, config)
    assert out.shape == (m, n) and out.dtype == dtype
    tol = 1e-4 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(out.float(), linear_ref(x.float(), w.float()).float(),
                               rtol=tol, atol=tol)


def test_skinny_linear_rejects_what_it_would_misread(device):
    with pytest.raises(ValueError, match="m <= 16"):
        skinny_linear(torch.zeros(17, 8, device=device), torch.zeros(4, 8, device=device))
    with pytest.raises(ValueError, match="unit stride along K"):  # a transposed view
        skinny_linear(torch.zeros(2, 8, device=device), torch.zeros(8, 4, device=device).T)
    with pytest.raises(ValueError, match="dtypes"):
        skinny_linear(torch.zeros(2, 8, device=device, dtype=torch.float16),
                      torch.zeros(4, 8, device=device))


def spy(monkeypatch) -> list:
    """Record the configs `linear` launches the kernel with."""
    calls, real = [], gemv.skinny_linear

    def recording(x, w, config=gemv.DEFAULT):
        calls.append(config)
        return real(x, w, config)

    monkeypatch.setattr(gemv, "skinny_linear", recording)
    return calls


def test_linear_triton_backend_runs_the_kernel(monkeypatch, device, gen):
    """backend="triton": the kernel wherever it can take the call (a non-contiguous x is
    made contiguous), F.linear where it cannot; TWINFER_GEMV=off means cuBLAS."""
    monkeypatch.delenv(gemv.ENV, raising=False)
    calls = spy(monkeypatch)
    n, k = 40, 72
    x = torch.randn((k, 3), generator=gen).to(device, torch.float16).T  # [3, 72], strided
    w = (torch.randn((n, k), generator=gen) / k**0.5).to(device, torch.float16)
    out = linear(x, w, backend="triton")
    assert calls == [GemvConfig()]
    torch.testing.assert_close(out.float(), linear_ref(x.float(), w.float()), rtol=2e-3,
                               atol=2e-3)
    assert linear(x[:1], w, backend="triton").shape == (1, n) and calls[-1].fma
    calls.clear()
    big = torch.randn((17, k), generator=gen).to(device, torch.float16)
    for args in [(big, w),  # m > 16
                 (x, torch.randn((k, n), generator=gen).to(device, torch.float16).T)]:
        assert torch.equal(linear(*args, backend="triton"), F.linear(*args))
    monkeypatch.setenv(gemv.ENV, "off")
    assert torch.equal(linear(x, w, backend="triton"), F.linear(x, w))
    assert calls == []


def test_dispatch_follows_the_table_and_the_environment(monkeypatch, tmp_path):
    """cuBLAS unless this GPU's table has the shape and m <= its max_m; the table file
    merges devices and a broken one is a clear error."""
    entry = {"one_row": GemvConfig(fma=True).to_dict(), "rows": GemvConfig().to_dict(),
             "max_m": 4}
    table = tmp_path / "gemv_tables.json"
    table.write_text(json.dumps({"GPU X": {"24,32": entry}, "GPU Y": {}}))
    got = gemv._device_table("GPU X", str(table))
    assert got[(24, 32)].max_m == 4 and got[(24, 32)].one_row.fma
    assert gemv._device_table("GPU Z", str(table)) == {}
    table.write_text("{broken")
    with pytest.raises(ValueError, match="not valid JSON"):
        gemv.read_tables(table)
    table.write_text(json.dumps({"GPU X": []}))
    with pytest.raises(ValueError, match="expected"):
        gemv.read_tables(table)
    # CPU tensors in auto mode: always F.linear; "off" too; "force": the kernel, for
    # half types only (the table is timed in bf16)
    x, w = torch.randn(2, 32, dtype=torch.float16), torch.randn(24, 32, dtype=torch.float16)
    monkeypatch.delenv(gemv.ENV, raising=False)
    assert gemv.choice_for(x, w) is None
    monkeypatch.setenv(gemv.ENV, "force")
    assert gemv.choice_for(x, w) == GemvConfig()
    assert gemv.choice_for(x[:1], w).fma
    assert gemv.choice_for(torch.randn(17, 32, dtype=torch.float16), w) is None
    assert gemv.choice_for(x.float(), w.float()) is None
    assert gemv.choice_for(x, w.T.contiguous().T) is None
    monkeypatch.setenv(gemv.ENV, "off")
    assert gemv.choice_for(x, w) is None


def test_lookup_keeps_the_kernel_up_to_max_m(tmp_path):
    one_row, rows = GemvConfig(block_n=16, fma=True), GemvConfig(block_n=64, block_k=128)
    table = tmp_path / "gemv_tables.json"
    table.write_text(json.dumps({"GPU X": {
        "24,32": {"one_row": one_row.to_dict(), "rows": rows.to_dict(), "max_m": 4},
        "48,32": {"one_row": one_row.to_dict(), "rows": rows.to_dict(), "max_m": 0}}}))
    got = [gemv.lookup("GPU X", 24, 32, m, table) for m in (1, 2, 4, 8, 16)]
    assert got == [one_row, rows, rows, None, None]
    assert gemv.lookup("GPU X", 48, 32, 1, table) is None  # cuBLAS won at m = 1
    assert gemv.lookup("GPU X", 32, 24, 1, table) is None  # unknown shape
    assert gemv.lookup("GPU Z", 24, 32, 1, table) is None  # unknown GPU


def test_linear_auto_on_the_interpreter_needs_force(monkeypatch):
    """Under TRITON_INTERPRET=1, auto mode runs the kernel on CPU tensors only when forced
    (there is no GPU name to look a table up under)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv(gemv.ENV, raising=False)
    calls = spy(monkeypatch)
    x, w = torch.randn(2, 40, dtype=torch.float16), torch.randn(24, 40, dtype=torch.float16)
    assert torch.equal(linear(x, w), F.linear(x, w)) and calls == []
    monkeypatch.setenv(gemv.ENV, "force")
    torch.testing.assert_close(linear(x, w).float(), linear_ref(x.float(), w.float()),
                               rtol=2e-3, atol=2e-3)
    assert calls == [GemvConfig()]


def test_linear_equals_f_linear_on_cpu_without_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x, w = torch.randn(3, 40), torch.randn(8, 40)
    assert torch.equal(linear(x, w), F.linear(x, w))


@pytest.mark.gpu
@pytest.mark.parametrize("n,k", [(3072, 4096), (4096, 2048), (14336, 4096), (4096, 7168),
                                 (16032, 4096)])  # Llama-3-8B TP=2 shards, LM head TP=8
@pytest.mark.parametrize("m", [1, 16])
def test_bf16_llama_shards_against_float64(n, k, m, close_to_ref):
    """flash-attention's bound: the kernel's error against float64 is at most twice
    cuBLAS's in bf16, for every kind of launch and for the dispatch as shipped."""
    gen = torch.Generator(device="cuda").manual_seed(n * k + m)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=gen)
    w = (torch.randn(n, k, device="cuda", generator=gen) / k**0.5).to(torch.bfloat16)
    ref64 = x.double() @ w.double().T
    cublas = F.linear(x, w)
    for config in (GemvConfig(fma=True), GemvConfig(), GemvConfig(block_n=16, split_k=4),
                   GemvConfig(block_n=64, block_k=128, num_warps=8, num_stages=5)):
        close_to_ref(skinny_linear(x, w, config), cublas, ref64, atol=1e-3)
    close_to_ref(linear(x, w), cublas, ref64, atol=1e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 16])
@pytest.mark.parametrize("fma", [True, False])
def test_bf16_cuda_graph_capture_and_replay(m, fma):
    torch.manual_seed(0)
    x = torch.randn(m, 4096, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(3072, 4096, device="cuda", dtype=torch.bfloat16) / 64
    want = linear_ref(x, w).float()
    for config in (GemvConfig(fma=fma), GemvConfig(block_n=16, split_k=4, fma=fma)):
        torch.testing.assert_close(skinny_linear(x, w, config).float(), want, rtol=2e-2,
                                   atol=2e-2)
        graph = torch.cuda.CUDAGraph()
        static = x.clone()
        skinny_linear(static, w, config)  # compile outside the capture
        torch.cuda.synchronize()
        with torch.cuda.graph(graph):
            out = skinny_linear(static, w, config)  # split K: the zeroed buffer is captured
        static.copy_(x * 2)
        graph.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(out.float(), 2 * want, rtol=2e-2, atol=4e-2)
