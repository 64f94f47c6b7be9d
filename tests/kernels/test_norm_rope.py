"""Fused RMSNorm (+ residual) and RoPE against float64 references."""

import pytest
import torch

from twinfer.kernels import add_rmsnorm, apply_rope, rmsnorm, rmsnorm_ref, rope_cos_sin, rope_ref


@pytest.mark.parametrize("hidden", [64, 100, 4096])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_rmsnorm(hidden, dtype, device, gen, poison, close_to_ref):
    x = torch.randn((3, 5, hidden), generator=gen).to(device, dtype)
    w = torch.randn((hidden,), generator=gen).to(device, dtype)
    out = rmsnorm(x, w, eps=1e-6)
    assert out.shape == x.shape and out.dtype == dtype
    close_to_ref(out, rmsnorm_ref(x, w, eps=1e-6), rmsnorm_ref(x.double(), w.double(), eps=1e-6))


@pytest.mark.parametrize("hidden", [100, 2048])
def test_add_rmsnorm(hidden, device, gen, poison, close_to_ref):
    x = torch.randn((7, hidden), generator=gen).to(device, torch.float16)
    res = torch.randn((7, hidden), generator=gen).to(device, torch.float16)
    w = torch.randn((hidden,), generator=gen).to(device, torch.float16)
    out, h = add_rmsnorm(x, res, w)
    # h is the fp16 sum, exactly as an unfused x + residual
    assert torch.equal(h, x + res)
    close_to_ref(out, rmsnorm_ref(h, w), rmsnorm_ref(h.double(), w.double()))


def test_rope_table_is_exact_at_long_positions():
    table = rope_cos_sin(200_000, 128, theta=500000.0)
    p = 199_999
    angle = torch.tensor(p, dtype=torch.float64) * 500000.0 ** (-2 * 3 / 128)
    assert abs(table[p, 3].item() - angle.cos().item()) < 1e-7
    assert abs(table[p, 64 + 3].item() - angle.sin().item()) < 1e-7


@pytest.mark.parametrize("q_heads,kv_heads,head_dim", [(8, 2, 64), (4, 4, 80), (32, 8, 128)])
def test_rope(q_heads, kv_heads, head_dim, device, gen, poison, close_to_ref):
    tokens = 9
    q = torch.randn((tokens, q_heads, head_dim), generator=gen).to(device, torch.float16)
    k = torch.randn((tokens, kv_heads, head_dim), generator=gen).to(device, torch.float16)
    positions = torch.randint(0, 5000, (tokens,), generator=gen).to(device)
    table = rope_cos_sin(5000, head_dim, device=device)
    q_rot, k_rot = apply_rope(q, k, positions, table)
    q_ref, k_ref = rope_ref(q.double(), k.double(), positions, table.double())
    q_low, k_low = rope_ref(q, k, positions, table)
    close_to_ref(q_rot, q_low, q_ref)
    close_to_ref(k_rot, k_low, k_ref)


def test_rope_position_zero_is_identity(device, gen):
    q = torch.randn((3, 2, 64), generator=gen).to(device)
    k = torch.randn((3, 1, 64), generator=gen).to(device)
    zeros = torch.zeros(3, dtype=torch.long, device=device)
    q_rot, k_rot = apply_rope(q, k, zeros, rope_cos_sin(4, 64, device=device))
    assert torch.equal(q_rot, q) and torch.equal(k_rot, k)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_norm_rope_gpu(dtype, gen, poison, close_to_ref):
    x = torch.randn((4096, 4096), generator=gen).to("cuda", dtype)
    res = torch.randn((4096, 4096), generator=gen).to("cuda", dtype)
    w = torch.randn((4096,), generator=gen).to("cuda", dtype)
    out, h = add_rmsnorm(x, res, w)
    assert torch.equal(h, x + res)
    close_to_ref(out, rmsnorm_ref(h, w), rmsnorm_ref(h.double(), w.double()))
    q = torch.randn((4096, 32, 128), generator=gen).to("cuda", dtype)
    k = torch.randn((4096, 8, 128), generator=gen).to("cuda", dtype)
    positions = torch.randint(0, 131072, (4096,), generator=gen).cuda()
    table = rope_cos_sin(131072, 128, theta=500000.0, device="cuda")
    q_rot, k_rot = apply_rope(q, k, positions, table)
    q_ref, k_ref = rope_ref(q.double(), k.double(), positions, table.double())
    q_low, k_low = rope_ref(q, k, positions, table)
    close_to_ref(q_rot, q_low, q_ref)
    close_to_ref(k_rot, k_low, k_ref)


@pytest.mark.gpu
def test_repeated_norm_rope_calls_gpu(gen, close_to_ref):
    # Second and later calls take the direct compiled-kernel launch.
    w = torch.randn((4096,), generator=gen).to("cuda", torch.bfloat16)
    table = rope_cos_sin(4096, 128, device="cuda")
    for tokens in (5, 5, 5, 9):
        x = torch.randn((tokens, 4096), generator=gen).to("cuda", torch.bfloat16)
        close_to_ref(rmsnorm(x, w), rmsnorm_ref(x, w), rmsnorm_ref(x.double(), w.double()))
        q = torch.randn((tokens, 32, 128), generator=gen).to("cuda", torch.bfloat16)
        k = torch.randn((tokens, 8, 128), generator=gen).to("cuda", torch.bfloat16)
        positions = torch.randint(0, 4096, (tokens,), generator=gen).cuda()
        q_rot, k_rot = apply_rope(q, k, positions, table)
        q_ref, k_ref = rope_ref(q.double(), k.double(), positions, table.double())
        q_low, k_low = rope_ref(q, k, positions, table)
        close_to_ref(q_rot, q_low, q_ref)
        close_to_ref(k_rot, k_low, k_ref)
