"""The fused KV-sharded decode kernels on a simulated world of one process.

Every "rank" has its own receive buffers; the address tables point at all of them,
exactly as symmetric memory's peer pointers do on GPUs. All ranks push, then each
combines: the flags are then already raised, so the combine's spin exits at once
(the interpreter runs programs one after another). The real two-GPU exchange is in
tests/exec/test_kvshard_comm.py (multigpu).
"""

import pytest
import torch

from twinfer.kernels.decode import flash_decode_ref
from twinfer.kernels.peer_combine import (
    DecodeShape,
    KvShard,
    attend_and_push,
    combine_from_peers,
    local_peer_buffers,
)


def _shards(k_full, v_full, seq_lens, world):
    """Rank r holds positions [r*C, (r+1)*C) of every sequence (views, not copies)."""
    chunk = -(-k_full.shape[2] // world)
    shards = []
    for r in range(world):
        lens = (seq_lens - r * chunk).clamp(0, chunk).to(torch.int32)
        sl = slice(r * chunk, (r + 1) * chunk)
        shards.append(KvShard(k_full[:, :, sl], v_full[:, :, sl], lens))
    return shards


def _round(q, shards, bufs, epoch):
    for shard, b in zip(shards, bufs, strict=True):
        attend_and_push(q, shard, b, epoch)
    return [combine_from_peers(b, epoch, q.dtype) for b in bufs]


@pytest.mark.parametrize(
    "world,batch,q_heads,kv_heads,head_dim,splits,dtype",
    [
        (2, 3, 4, 4, 64, 1, torch.float32),   # MHA, one split
        (2, 2, 8, 2, 80, 3, torch.float16),   # GQA group 4, odd head_dim, many splits
        (3, 2, 8, 1, 64, 2, torch.float16),   # 3 ranks, group 8
    ],
)
def test_every_rank_gets_the_full_attention(
    gen, device, close_to_ref, world, batch, q_heads, kv_heads, head_dim, splits, dtype
):
    capacity = 45 * world
    q = torch.randn((batch, q_heads, head_dim), generator=gen).to(device, dtype)
    k = torch.randn((batch, kv_heads, capacity, head_dim), generator=gen).to(device, dtype)
    v = torch.randn((batch, kv_heads, capacity, head_dim), generator=gen).to(device, dtype)
    # Unequal lengths: one sequence leaves the last rank's shard empty.
    seq_lens = torch.tensor([capacity - 7, 30] + [capacity] * (batch - 2))[:batch]
    bufs = local_peer_buffers(DecodeShape(world, batch, q_heads, kv_heads, head_dim, splits),
                              device)
    results = _round(q, _shards(k, v, seq_lens, world), bufs, epoch=1)

    ref = flash_decode_ref(q.double(), k.double(), v.double(), seq_lens)
    lowp = flash_decode_ref(q, k, v, seq_lens, compute_dtype=dtype)
    for out, lse in results:
        assert out.shape == q.shape and out.dtype == dtype
        assert lse.shape == (batch, q_heads) and lse.dtype == torch.float32
        close_to_ref(out, lowp[0], ref[0], factor=3.0)
        close_to_ref(lse, lowp[1], ref[1], factor=3.0)
    # Every rank raised every tile's flag in every rank's array to the epoch.
    for b in bufs:
        assert torch.equal(b.flags.cpu(), torch.ones_like(b.flags.cpu()))


def test_rounds_alternate_slots_and_flags_carry_the_epoch(gen, device):
    world, batch, q_heads, kv_heads, head_dim = 2, 2, 4, 2, 64
    k = torch.randn((batch, kv_heads, 64, head_dim), generator=gen).to(device)
    v = torch.randn((batch, kv_heads, 64, head_dim), generator=gen).to(device)
    seq_lens = torch.tensor([64, 41])
    bufs = local_peer_buffers(DecodeShape(world, batch, q_heads, kv_heads, head_dim, 2), device)
    shards = _shards(k, v, seq_lens, world)
    qs = [torch.randn((batch, q_heads, head_dim), generator=gen).to(device) for _ in range(3)]
    for epoch, q in enumerate(qs, start=1):
        results = _round(q, shards, bufs, epoch)
        ref = flash_decode_ref(q.double(), k.double(), v.double(), seq_lens)
        for out, lse in results:
            assert (out.double() - ref[0]).abs().max().item() < 1e-5
            assert (lse.double() - ref[1]).abs().max().item() < 1e-5
        assert set(bufs[0].flags.unique().tolist()) == {epoch}
    # Round 3 wrote parity slot 1; slot 0 still holds round 2's parts.
    out2, _ = combine_from_peers(bufs[1], 2, torch.float32)
    ref2 = flash_decode_ref(qs[1].double(), k.double(), v.double(), seq_lens)[0]
    assert (out2.double() - ref2).abs().max().item() < 1e-5


def test_empty_shards_everywhere_give_zero_and_minus_inf(device):
    world, batch, heads, head_dim = 2, 1, 2, 16
    bufs = local_peer_buffers(DecodeShape(world, batch, heads, heads, head_dim), device)
    k = torch.zeros((batch, heads, 8, head_dim), device=device)
    shard = KvShard(k, k, torch.zeros(batch, dtype=torch.int32))
    q = torch.ones((batch, heads, head_dim), device=device)
    out, lse = _round(q, [shard, shard], bufs, epoch=1)[0]
    assert torch.equal(out.cpu(), torch.zeros(batch, heads, head_dim))
    assert torch.equal(lse.cpu(), torch.full((batch, heads), float("-inf")))


def test_mismatched_buffers_are_rejected(device):
    bufs = local_peer_buffers(DecodeShape(2, 2, 4, 2, 16), device)
    k = torch.zeros((1, 2, 8, 16), device=device)
    with pytest.raises(ValueError, match="buffers sized for"):
        attend_and_push(torch.zeros((1, 4, 16), device=device),
                        KvShard(k, k, torch.ones(1, dtype=torch.int32)), bufs[0], 1)


def test_pushed_partials_merge_like_lse_combine(gen, device):
    from twinfer.kernels.combine import lse_combine_ref
    from twinfer.kernels.peer_combine import push_partials

    world, batch, heads, head_dim = 3, 2, 4, 24
    outs = torch.randn((world, batch, heads, head_dim), generator=gen).to(device)
    lses = torch.randn((world, batch, heads), generator=gen).to(device)
    lses[1, 0, 2] = float("-inf")  # an empty part
    bufs = local_peer_buffers(DecodeShape(world, batch, heads, heads, head_dim), device)
    for epoch in (1, 2):
        for r, b in enumerate(bufs):
            push_partials(outs[r] * epoch, lses[r], b, epoch)
        ref_out, ref_lse = lse_combine_ref(outs.double() * epoch, lses.double())
        for b in bufs:
            out, lse = combine_from_peers(b, epoch, torch.float32)
            assert (out.double() - ref_out).abs().max().item() < 1e-5
            assert (lse.double() - ref_lse).abs().max().item() < 1e-5
