"""The fused SwiGLU activation against its fp32 reference and torch's unfused ops."""

import pytest
import torch
import torch.nn.functional as F

from twinfer.kernels.activation import silu_mul, silu_mul_ref


@pytest.mark.parametrize("tokens,ffn", [(1, 7168), (5, 100), (3, 2500)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.bfloat16])
def test_silu_mul_matches_the_reference(tokens, ffn, dtype, device, gen):
    gate_up = torch.randn((tokens, 2 * ffn), generator=gen).to(device, dtype)
    out = silu_mul(gate_up)
    assert out.shape == (tokens, ffn) and out.dtype == dtype
    want = silu_mul_ref(gate_up)
    tol = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(out, want, rtol=tol, atol=tol)
    # the model's unfused ops round twice; within a rounding of the fused result
    gate, up = gate_up.chunk(2, dim=-1)
    torch.testing.assert_close(out.float(), (F.silu(gate) * up).float(), rtol=2 * tol,
                               atol=2 * tol)


def test_silu_mul_rejects_bad_shapes_and_handles_no_tokens(device):
    with pytest.raises(ValueError, match="2 \\* ffn"):
        silu_mul(torch.zeros(2, 7, device=device))
    assert silu_mul(torch.zeros(0, 8, device=device)).shape == (0, 4)
