"""lse_combine: merging attention computed over disjoint key parts is exact."""

import pytest
import torch

from twinfer.kernels import flash_decode_ref, lse_combine, lse_combine_ref


def _split_attention(gen, batch, heads, head_dim, cuts, device):
    """Attention over a 64-key context, and the same attention computed part by part."""
    q = torch.randn((batch, heads, head_dim), generator=gen, dtype=torch.float64)
    k = torch.randn((batch, heads, 64, head_dim), generator=gen, dtype=torch.float64)
    v = torch.randn((batch, heads, 64, head_dim), generator=gen, dtype=torch.float64)
    full = torch.full((batch,), 64, dtype=torch.int32)
    whole = flash_decode_ref(q, k, v, full)
    outs, lses = [], []
    for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
        out, lse = flash_decode_ref(q, k[:, :, lo:hi], v[:, :, lo:hi],
                                    torch.full((batch,), hi - lo, dtype=torch.int32))
        outs.append(out)
        lses.append(lse)
    return torch.stack(outs).to(device), torch.stack(lses).to(device), whole


@pytest.mark.parametrize("head_dim", [64, 80, 128])
@pytest.mark.parametrize("cuts", [[0, 64], [0, 10, 11, 40, 64], [0, 0, 30, 30, 64, 64]])
def test_combine_recovers_whole_attention(head_dim, cuts, device, gen, poison):
    # Empty parts (lo == hi) have lse = -inf and a zero output.
    outs, lses, (ref_out, ref_lse) = _split_attention(gen, 2, 3, head_dim, cuts, device)
    out, lse = lse_combine(outs.float(), lses.float())
    torch.testing.assert_close(out.double().cpu(), ref_out, rtol=0, atol=1e-5)
    torch.testing.assert_close(lse.double().cpu(), ref_lse, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_combine_against_reference(dtype, device, gen, poison, close_to_ref):
    outs = torch.randn((7, 3, 5, 80), generator=gen).to(device=device, dtype=dtype)
    lses = (torch.randn((7, 3, 5), generator=gen) * 5).to(device)
    lses[2] = float("-inf")  # an empty part on every row...
    outs[2] = float("nan")  # ...whose output is garbage and must be ignored
    lses[:, 1, 4] = float("-inf")  # a row whose parts are all empty
    out, lse = lse_combine(outs, lses)
    ref_out, ref_lse = lse_combine_ref(outs.double(), lses.double())
    lowp_out, lowp_lse = lse_combine_ref(outs, lses)
    close_to_ref(out, lowp_out, ref_out)
    close_to_ref(lse, lowp_lse, ref_lse)
    assert torch.equal(out[1, 4], torch.zeros_like(out[1, 4]))
    assert torch.isneginf(lse[1, 4])


def test_combine_many_parts(device, gen):
    outs = torch.randn((300, 2, 2, 64), generator=gen).to(device)
    lses = torch.randn((300, 2, 2), generator=gen).to(device)
    out, lse = lse_combine(outs, lses)
    ref_out, ref_lse = lse_combine_ref(outs.double(), lses.double())
    torch.testing.assert_close(out.double(), ref_out, rtol=0, atol=1e-5)
    torch.testing.assert_close(lse.double(), ref_lse, rtol=0, atol=1e-5)


def test_combine_shape_mismatch(device):
    with pytest.raises(ValueError, match="disagree"):
        lse_combine(torch.zeros(2, 3, 4, 8, device=device), torch.zeros(2, 3, 5, device=device))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_combine_gpu(dtype, gen, poison, close_to_ref):
    outs = torch.randn((16, 64, 32, 128), generator=gen).to(device="cuda", dtype=dtype)
    lses = (torch.randn((16, 64, 32), generator=gen) * 3).cuda()
    lses[::3] = float("-inf")
    out, lse = lse_combine(outs, lses)
    ref_out, ref_lse = lse_combine_ref(outs.double(), lses.double())
    lowp_out, lowp_lse = lse_combine_ref(outs, lses)
    close_to_ref(out, lowp_out, ref_out)
    close_to_ref(lse, lowp_lse, ref_lse)
