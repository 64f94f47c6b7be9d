"""paged_kv_append writes exactly the slots it is given, and nothing else."""

import pytest
import torch

from twinfer.kernels import paged_kv_append, paged_kv_append_ref


def _pages(gen, num_blocks, page_size, heads, head_dim, dtype, device):
    shape = (num_blocks, page_size, heads, head_dim)
    return (torch.randn(shape, generator=gen).to(device=device, dtype=dtype) for _ in range(2))


@pytest.mark.parametrize("page_size", [16, 64])
@pytest.mark.parametrize("heads,head_dim", [(1, 64), (3, 80), (8, 128)])
def test_append_writes_slots(page_size, heads, head_dim, device, gen):
    k_pages, v_pages = _pages(gen, 5, page_size, heads, head_dim, torch.float16, device)
    tokens = 11
    slots = torch.randperm(5 * page_size, generator=gen)[:tokens].to(device)
    slots[3] = -1  # a padding token: written nowhere
    k_new = torch.randn((tokens, heads, head_dim), generator=gen).to(device, torch.float16)
    v_new = torch.randn((tokens, heads, head_dim), generator=gen).to(device, torch.float16)
    k_expect, v_expect = k_pages.clone(), v_pages.clone()
    paged_kv_append_ref(k_expect, v_expect, k_new, v_new, slots)
    paged_kv_append(k_pages, v_pages, k_new, v_new, slots)
    assert torch.equal(k_pages, k_expect) and torch.equal(v_pages, v_expect)
    # and the reference itself put token t at (slot // page_size, slot % page_size)
    t = 5
    page, row = divmod(int(slots[t]), page_size)
    assert torch.equal(k_expect[page, row], k_new[t]) and torch.equal(v_expect[page, row], v_new[t])


def test_append_casts_and_accepts_strided_input(device, gen):
    k_pages, v_pages = _pages(gen, 2, 16, 2, 64, torch.float16, device)
    both = torch.randn((4, 4, 64), generator=gen).to(device)  # fp32, [tokens, 2 * heads, D]
    k_new, v_new = both[:, :2], both[:, 2:]  # strided views
    slots = torch.tensor([0, 17, 31, 5], device=device)
    paged_kv_append(k_pages, v_pages, k_new, v_new, slots)
    assert torch.equal(k_pages[1, 1], k_new[1].half())
    assert torch.equal(v_pages[1, 15], v_new[2].half())


def test_append_rejects_bad_shapes(device):
    pages = torch.zeros(2, 16, 2, 64, device=device)
    with pytest.raises(ValueError, match="bad shapes"):
        paged_kv_append(pages, pages, torch.zeros(3, 4, 64, device=device),
                        torch.zeros(3, 4, 64, device=device), torch.zeros(3, dtype=torch.long))


@pytest.mark.gpu
def test_append_gpu(gen):
    k_pages, v_pages = _pages(gen, 300, 16, 8, 128, torch.bfloat16, "cuda")
    slots = torch.randperm(300 * 16, generator=gen)[:2000].cuda()
    k_new = torch.randn((2000, 8, 128), generator=gen).to("cuda", torch.bfloat16)
    v_new = torch.randn((2000, 8, 128), generator=gen).to("cuda", torch.bfloat16)
    k_expect, v_expect = k_pages.clone(), v_pages.clone()
    paged_kv_append(k_expect, v_expect, k_new, v_new, slots, backend="torch")
    paged_kv_append(k_pages, v_pages, k_new, v_new, slots)
    assert torch.equal(k_pages, k_expect) and torch.equal(v_pages, v_expect)
