"""Attention of queries over a subset of their sequence's keys, with the LSE.

The `kv_sharded` and `fa_pool` layouts split a sequence's keys over GPUs; for a
prompt, every GPU attends all of the prompt's queries over the keys it holds, each
key visible to the queries at or after its position (causal by absolute position,
whatever subset of keys a GPU holds). The partial outputs are merged exactly by LSE
(`twinfer.kernels.combine`). Plain torch ops in fp32, a chunk of queries at a time so
that the score matrix stays small; used for prompts (decode goes through the
project's split-KV kernels).
"""

from __future__ import annotations

import torch

QUERY_CHUNK = 1024


def partial_attention(q: torch.Tensor, q_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      k_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q: [L, heads, D] at positions q_pos int [L]; k, v: [N, kv_heads, D] at k_pos [N].

    Returns out fp32 [L, heads, D] (normalized over the visible keys; 0 where none is)
    and lse fp32 [L, heads] (natural log; -inf where no key is visible).
    """
    length, heads, head_dim = q.shape
    kv_heads = k.shape[1]
    group = heads // kv_heads
    scale = head_dim ** -0.5
    out = torch.zeros((length, heads, head_dim), dtype=torch.float32, device=q.device)
    lse = torch.full((length, heads), float("-inf"), dtype=torch.float32, device=q.device)
    if k.shape[0] == 0 or length == 0:
        return out, lse
    kf = k.float().transpose(0, 1)  # [kv_heads, N, D]
    vf = v.float().transpose(0, 1)
    for start in range(0, length, QUERY_CHUNK):
        stop = min(start + QUERY_CHUNK, length)
        n = stop - start
        # [kv_heads, group * n, D]: each KV head's query heads, never K/V copies
        qc = q[start:stop].float().view(n, kv_heads, group, head_dim).permute(1, 2, 0, 3)
        scores = torch.matmul(qc.reshape(kv_heads, group * n, head_dim),
                              kf.transpose(1, 2)) * scale
        scores = scores.view(kv_heads, group, n, -1)
        visible = k_pos[None, :] <= q_pos[start:stop, None]  # [n, N]
        scores = scores.masked_fill(~visible, float("-inf"))
        part_lse = torch.logsumexp(scores, dim=-1)  # [kv_heads, group, n]
        probs = torch.exp(scores - torch.where(torch.isinf(part_lse), 0.0, part_lse)[..., None])
        part = torch.matmul(probs, vf[:, None])  # [kv_heads, group, n, D]
        out[start:stop] = part.permute(2, 0, 1, 3).reshape(n, heads, head_dim)
        lse[start:stop] = part_lse.permute(2, 0, 1).reshape(n, heads)
    return out, lse
