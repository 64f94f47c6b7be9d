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


def test_skinny_linear_rejects_more_than_16_rows(device):
    with pytest.raises(ValueError, match="m <= 16"):
        skinny_linear(torch.zeros(17, 8, device=device), torch.zeros(4, 8, device=device))


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
    # CPU tensors in auto mode: always F.linear; "off" too; "force": the kernel
    x, w = torch.randn(2, 32), torch.randn(24, 32)
    monkeypatch.delenv(gemv.ENV, raising=False)
    assert gemv.choice_for(x, w) is None
    assert gemv.choice_for(torch.randn(17, 32), w) is None
    monkeypatch.setenv(gemv.ENV, "force")
    assert gemv.choice_for(x, w) == GemvConfig()
    assert gemv.choice_for(x[:1], w).fma
    monkeypatch.setenv(gemv.ENV, "off")
    assert gemv.choice_for(x, w) is None


def test_linear_equals_f_linear_on_cpu_without_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x, w = torch.randn(3, 40), torch.randn(8, 40)
    assert torch.equal(linear(x, w), F.linear(x, w))


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 16])
@pytest.mark.parametrize("fma", [True, False])
def test_bf16_llama_shapes_and_cuda_graphs(m, fma):
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
            out = skinny_linear(static, w, config)
        static.copy_(x * 2)
        graph.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(out.float(), 2 * want, rtol=2e-2, atol=4e-2)
