"""Varlen causal prefill with GQA against float64, and its paged-cache write."""

import pytest
import torch

from twinfer.kernels import gather_pages, prefill_attention, prefill_attention_ref


def _packed(gen, lengths, q_heads, kv_heads, head_dim, dtype, device):
    tokens = sum(lengths)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    q = torch.randn((tokens, q_heads, head_dim), generator=gen)
    k = torch.randn((tokens, kv_heads, head_dim), generator=gen)
    v = torch.randn((tokens, kv_heads, head_dim), generator=gen)
    return (*(x.to(device=device, dtype=dtype) for x in (q, k, v)), cu.to(device))


def _check(close_to_ref, q, k, v, cu, out, lse):
    ref_out, ref_lse = prefill_attention_ref(q.double(), k.double(), v.double(), cu,
                                             return_lse=True)
    lowp_out, lowp_lse = prefill_attention_ref(q, k, v, cu, return_lse=True,
                                               compute_dtype=q.dtype)
    assert out.dtype == q.dtype and lse.dtype == torch.float32
    close_to_ref(out, lowp_out, ref_out)
    close_to_ref(lse, lowp_lse, ref_lse)


@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("head_dim", [64, 80, 128])
def test_prefill(head_dim, group, device, gen, poison, close_to_ref):
    # Lengths: one token, a block boundary + 1, odd ones; one empty prompt.
    q, k, v, cu = _packed(gen, [1, 17, 0, 45, 30], 2 * group, 2, head_dim, torch.float16,
                          device)
    out, lse = prefill_attention(q, k, v, cu, return_lse=True)
    _check(close_to_ref, q, k, v, cu, out, lse)


def test_prefill_sdpa_reference_agrees_with_explicit(gen):
    q, k, v, cu = _packed(gen, [5, 12, 1], 8, 2, 64, torch.float64, "cpu")
    sdpa, _ = prefill_attention_ref(q, k, v, cu)
    explicit, _ = prefill_attention_ref(q, k, v, cu, return_lse=True)
    torch.testing.assert_close(sdpa, explicit, rtol=0, atol=1e-12)


def test_prefill_writes_pages(device, gen):
    page_size, lengths = 16, [20, 7]
    q, k, v, cu = _packed(gen, lengths, 4, 2, 64, torch.float16, device)
    table = torch.tensor([[3, 0], [1, 2]], dtype=torch.int32)  # seq 1 uses page 1 only
    positions = [torch.arange(n) for n in lengths]
    slots = torch.cat([table[b, pos // page_size].long() * page_size + pos % page_size
                       for b, pos in enumerate(positions)])
    k_pages = torch.zeros((4, page_size, 2, 64), dtype=torch.float16, device=device)
    v_pages = torch.zeros_like(k_pages)
    out, lse = prefill_attention(q, k, v, cu, k_pages=k_pages, v_pages=v_pages,
                                 slot_mapping=slots.to(device))
    assert lse is None
    k_seq0 = gather_pages(k_pages, table.to(device))[0, :, :20]  # [heads, 20, D]
    assert torch.equal(k_seq0, k[:20].transpose(0, 1))
    v_seq1 = gather_pages(v_pages, table.to(device))[1, :, :7]
    assert torch.equal(v_seq1, v[20:].transpose(0, 1))


def test_prefill_torch_backend_matches(device, gen):
    q, k, v, cu = _packed(gen, [9, 20], 8, 2, 64, torch.float32, device)
    out_t, _ = prefill_attention(q, k, v, cu, backend="torch")
    out_k, _ = prefill_attention(q, k, v, cu, max_seqlen=20)
    torch.testing.assert_close(out_k, out_t, rtol=0, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("q_heads,kv_heads,head_dim", [(32, 8, 128), (16, 16, 64), (8, 2, 80)])
def test_prefill_gpu(dtype, q_heads, kv_heads, head_dim, gen, poison, close_to_ref):
    q, k, v, cu = _packed(gen, [1000, 1, 2049, 300], q_heads, kv_heads, head_dim, dtype, "cuda")
    out, lse = prefill_attention(q, k, v, cu, return_lse=True)
    _check(close_to_ref, q, k, v, cu, out, lse)
