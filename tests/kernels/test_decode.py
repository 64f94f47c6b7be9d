"""Split-KV flash decode (contiguous and paged) against a float64 reference."""

import pytest
import torch

from twinfer.kernels import (
    DecodeTiles,
    choose_num_splits,
    flash_decode,
    flash_decode_ref,
    paged_flash_decode,
    paged_flash_decode_ref,
)

LOWP = torch.float16  # the interpreter's tl.dot mishandles bf16: bf16 runs on the GPU only


def _inputs(gen, batch, q_len, q_heads, kv_heads, max_seq, head_dim, dtype, device):
    shape_q = (batch, q_heads, head_dim) if q_len == 1 else (batch, q_len, q_heads, head_dim)
    q = torch.randn(shape_q, generator=gen, dtype=torch.float32)
    k = torch.randn((batch, kv_heads, max_seq, head_dim), generator=gen, dtype=torch.float32)
    v = torch.randn((batch, kv_heads, max_seq, head_dim), generator=gen, dtype=torch.float32)
    return (x.to(dtype=dtype, device=device) for x in (q, k, v))


def _paginate(k_cache, v_cache, page_size, gen, seq_lens):
    """Scatter a contiguous cache into shuffled pages; unused table entries are -1, so
    a kernel that reads past a sequence's last page fails loudly."""
    batch, kv_heads, max_seq, head_dim = k_cache.shape
    blocks = -(-max_seq // page_size)
    pad = blocks * page_size - max_seq
    perm = torch.randperm(batch * blocks + 3, generator=gen)[: batch * blocks]
    table = perm.view(batch, blocks).to(torch.int32)
    pages = []
    for cache in (k_cache, v_cache):
        padded = torch.nn.functional.pad(cache, (0, 0, 0, pad))  # [b, h, blocks*page, d]
        paged = padded.transpose(1, 2).reshape(batch * blocks, page_size, kv_heads, head_dim)
        out = torch.randn((batch * blocks + 3, page_size, kv_heads, head_dim),
                          generator=gen).to(cache)
        out[table.view(-1).long().to(cache.device)] = paged
        pages.append(out)
    for b, seq_len in enumerate(seq_lens.tolist()):
        table[b, -(-seq_len // page_size):] = -1
    return pages[0], pages[1], table.to(k_cache.device)


def _check_decode(close_to_ref, out, lse, q, k, v, seq_lens, paged=None):
    if paged is None:
        ref = flash_decode_ref(q.double(), k.double(), v.double(), seq_lens)
        lowp = flash_decode_ref(q, k, v, seq_lens, compute_dtype=q.dtype)
    else:
        kp, vp, table = paged
        ref = paged_flash_decode_ref(q.double(), kp.double(), vp.double(), table, seq_lens)
        lowp = paged_flash_decode_ref(q, kp, vp, table, seq_lens, compute_dtype=q.dtype)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert lse.shape == q.shape[:-1] and lse.dtype == torch.float32
    close_to_ref(out, lowp[0], ref[0])
    close_to_ref(lse, lowp[1], ref[1])


@pytest.mark.parametrize("num_splits", [1, 5])
@pytest.mark.parametrize("q_len", [1, 13])
@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("head_dim", [64, 80, 128])
def test_flash_decode(head_dim, group, q_len, num_splits, device, gen, poison, close_to_ref):
    kv_heads = 2
    q, k, v = _inputs(gen, 3, q_len, kv_heads * group, kv_heads, 77, head_dim, LOWP, device)
    seq_lens = torch.tensor([77, 45, 13], dtype=torch.int32, device=device)
    out, lse = flash_decode(q, k, v, seq_lens, num_splits=num_splits)
    _check_decode(close_to_ref, out, lse, q, k, v, seq_lens)


@pytest.mark.parametrize("tiles", [None, DecodeTiles(block_n=64)])
@pytest.mark.parametrize("num_splits", [1, 4])
@pytest.mark.parametrize("q_len", [1, 13])
@pytest.mark.parametrize("page_size", [16, 64])
def test_paged_flash_decode(page_size, q_len, num_splits, tiles, device, gen, poison,
                            close_to_ref):
    # tiles=64 with 16-token pages exercises the per-row gather of the block table.
    q, k, v = _inputs(gen, 3, q_len, 8, 2, 150, 64, LOWP, device)
    seq_lens = torch.tensor([150, 97, 14], dtype=torch.int32, device=device)
    k_pages, v_pages, table = _paginate(k, v, page_size, gen, seq_lens)
    out, lse = paged_flash_decode(q, k_pages, v_pages, table, seq_lens,
                                  num_splits=num_splits, tiles=tiles)
    _check_decode(close_to_ref, out, lse, q, k, v, seq_lens, paged=(k_pages, v_pages, table))


@pytest.mark.parametrize("block_n", [32, 64])
def test_flash_decode_other_tiles(block_n, device, gen, poison, close_to_ref):
    q, k, v = _inputs(gen, 3, 13, 8, 2, 77, 80, LOWP, device)
    seq_lens = torch.tensor([77, 40, 13], dtype=torch.int32, device=device)
    out, lse = flash_decode(q, k, v, seq_lens, num_splits=3,
                            tiles=DecodeTiles(block_n, num_stages=1))
    _check_decode(close_to_ref, out, lse, q, k, v, seq_lens)


def test_paged_equals_contiguous(device, gen):
    q, k, v = _inputs(gen, 2, 1, 8, 2, 100, 80, LOWP, device)
    seq_lens = torch.tensor([100, 33], dtype=torch.int32, device=device)
    k_pages, v_pages, table = _paginate(k, v, 16, gen, seq_lens)
    tiles = DecodeTiles(16, num_stages=1)
    contiguous = flash_decode(q, k, v, seq_lens, num_splits=3, tiles=tiles)
    paged = paged_flash_decode(q, k_pages, v_pages, table, seq_lens, num_splits=3, tiles=tiles)
    torch.testing.assert_close(paged, contiguous, rtol=0, atol=0)


def test_fp32_and_custom_scale(device, gen, poison, close_to_ref):
    q, k, v = _inputs(gen, 2, 1, 4, 4, 40, 64, torch.float32, device)
    seq_lens = torch.tensor([40, 17], dtype=torch.int32, device=device)
    out, lse = flash_decode(q, k, v, seq_lens, sm_scale=0.3, num_splits=2)
    ref = flash_decode_ref(q.double(), k.double(), v.double(), seq_lens, sm_scale=0.3)
    lowp = flash_decode_ref(q, k, v, seq_lens, sm_scale=0.3)
    close_to_ref(out, lowp[0], ref[0])
    close_to_ref(lse, lowp[1], ref[1])


def test_empty_sequence_and_empty_splits(device, gen, poison):
    # With 8 splits a 3-token sequence leaves most splits empty; a 0-token one all.
    q, k, v = _inputs(gen, 3, 1, 8, 2, 50, 64, LOWP, device)
    seq_lens = torch.tensor([0, 3, 50], dtype=torch.int32, device=device)
    out, lse = flash_decode(q, k, v, seq_lens, num_splits=8)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert torch.isneginf(lse[0]).all()
    assert torch.isfinite(out[1:]).all() and torch.isfinite(lse[1:]).all()
    ref_out, ref_lse = flash_decode_ref(q[1:].double(), k[1:].double(), v[1:].double(),
                                        seq_lens[1:])
    torch.testing.assert_close(out[1:].double(), ref_out, rtol=0, atol=2e-3)
    torch.testing.assert_close(lse[1:].double(), ref_lse.double(), rtol=0, atol=1e-5)


def test_gqa_reads_no_expanded_cache(device, gen):
    # The kernel gets the [batch, kv_heads, ...] cache as is; a strided view (every other
    # KV head of a bigger cache) proves it never needs a materialized copy.
    q, k, v = _inputs(gen, 2, 1, 8, 4, 33, 64, LOWP, device)
    seq_lens = torch.tensor([33, 20], dtype=torch.int32, device=device)
    ks, vs = k[:, ::2], v[:, ::2]
    out, _ = flash_decode(q, ks, vs, seq_lens, num_splits=2)
    ref, _ = flash_decode_ref(q.double(), ks.double(), vs.double(), seq_lens)
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=2e-3)


def test_choose_num_splits():
    # H200 (132 SMs) choices the split sweep in docs/BENCHMARKS.md measured best or
    # within a few percent of it.
    assert 24 <= choose_num_splits(1, 8, 131072, 132) <= 33  # batch 1: fill the GPU
    assert choose_num_splits(8, 8, 32768, 132) == 4
    assert choose_num_splits(32, 8, 8192, 132) == 1  # 256 programs: one full wave
    assert choose_num_splits(64, 8, 8192, 132) == 3  # 512 would leave a ragged 2nd wave
    # Measured in the executor's decode graph on H100s (132 SMs): batch 1 at 4K is best
    # with 16 splits, at 32K with about 32 (one wave of ~2 programs per SM).
    assert choose_num_splits(1, 8, 4096, 132, 128) == 16
    assert choose_num_splits(1, 8, 8192, 132, 128) == 16
    assert 28 <= choose_num_splits(1, 8, 32768, 132, 128) <= 32
    assert 28 <= choose_num_splits(1, 4, 32768, 132, 128) <= 32
    assert choose_num_splits(16, 4, 32768, 132, 128) == 4  # batch 16 already fills it
    # A split is at least one tile, and the count stays within bounds.
    assert choose_num_splits(1, 8, 1024, 132, 64) <= 16
    assert all(1 <= choose_num_splits(b, 8, c, 132) <= 64
               for b in (1, 2, 3, 8, 32) for c in (16, 1000, 8192, 100_000))


def test_shape_errors(device):
    q = torch.zeros(1, 6, 64, dtype=LOWP, device=device)
    k = torch.zeros(1, 4, 16, 64, dtype=LOWP, device=device)
    with pytest.raises(ValueError, match="bad shapes"):
        flash_decode(q, k, k, torch.ones(1, dtype=torch.int32), backend="triton")
    with pytest.raises(ValueError, match="backend"):
        flash_decode(q, k, k, torch.ones(1, dtype=torch.int32), backend="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("q_heads,kv_heads,head_dim", [(32, 8, 128), (32, 32, 128), (28, 4, 80)])
@pytest.mark.parametrize("q_len", [1, 13])
def test_flash_decode_gpu(dtype, q_heads, kv_heads, head_dim, q_len, gen, poison, close_to_ref):
    q, k, v = _inputs(gen, 4, q_len, q_heads, kv_heads, 5000, head_dim, dtype, "cuda")
    seq_lens = torch.tensor([5000, 4097, 1000, 13], dtype=torch.int32, device="cuda")
    out, lse = flash_decode(q, k, v, seq_lens)
    _check_decode(close_to_ref, out, lse, q, k, v, seq_lens)
    out1, lse1 = flash_decode(q, k, v, seq_lens, num_splits=1)
    _check_decode(close_to_ref, out1, lse1, q, k, v, seq_lens)


@pytest.mark.gpu
@pytest.mark.parametrize("page_size", [16, 64, 256])
@pytest.mark.parametrize("q_len", [1, 13])
def test_paged_flash_decode_gpu(page_size, q_len, gen, poison, close_to_ref):
    q, k, v = _inputs(gen, 4, q_len, 32, 8, 3000, 128, torch.bfloat16, "cuda")
    seq_lens = torch.tensor([3000, 2049, 700, 15], dtype=torch.int32, device="cuda")
    k_pages, v_pages, table = _paginate(k, v, page_size, gen, seq_lens)
    out, lse = paged_flash_decode(q, k_pages, v_pages, table, seq_lens)
    _check_decode(close_to_ref, out, lse, q, k, v, seq_lens, paged=(k_pages, v_pages, table))


@pytest.mark.gpu
@pytest.mark.parametrize("page_size", [None, 16, 64])
@pytest.mark.parametrize("tiles", [DecodeTiles(32, 4, 2), DecodeTiles(128, 4, 4),
                                   DecodeTiles(64, 8, 3), DecodeTiles(128, 4, 3)])
def test_decode_tiles_gpu(tiles, page_size, gen, poison, close_to_ref):
    # Every configuration the benchmark sweeps must be correct, not only the default.
    q, k, v = _inputs(gen, 2, 1, 32, 8, 2000, 128, torch.bfloat16, "cuda")
    seq_lens = torch.tensor([2000, 1111], dtype=torch.int32, device="cuda")
    if page_size is None:
        out, lse = flash_decode(q, k, v, seq_lens, num_splits=7, tiles=tiles)
        _check_decode(close_to_ref, out, lse, q, k, v, seq_lens)
        return
    k_pages, v_pages, table = _paginate(k, v, page_size, gen, seq_lens)
    out, lse = paged_flash_decode(q, k_pages, v_pages, table, seq_lens, num_splits=7,
                                  tiles=tiles)
    _check_decode(close_to_ref, out, lse, q, k, v, seq_lens, paged=(k_pages, v_pages, table))


@pytest.mark.gpu
@pytest.mark.parametrize("paged", [False, True])
def test_repeated_calls_gpu(paged, gen, close_to_ref):
    # From the second call on, the launch reuses the compiled kernel directly
    # (backend.launch); every call must still see its own arguments.
    for step in range(3):
        q, k, v = _inputs(gen, 3, 1, 32, 8, 1500, 128, torch.bfloat16, "cuda")
        seq_lens = torch.tensor([1500, 700 + step, 64], dtype=torch.int32, device="cuda")
        if not paged:
            out, lse = flash_decode(q, k, v, seq_lens)
            _check_decode(close_to_ref, out, lse, q, k, v, seq_lens)
            continue
        k_pages, v_pages, table = _paginate(k, v, 16, gen, seq_lens)
        out, lse = paged_flash_decode(q, k_pages, v_pages, table, seq_lens)
        _check_decode(close_to_ref, out, lse, q, k, v, seq_lens, paged=(k_pages, v_pages, table))
