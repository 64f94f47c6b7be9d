"""The single-process reference the executor is checked against.

The whole model on one device (`Transformer` with no `Part`), the same full weights
(`SeededWeights` or a checkpoint), and no KV cache at all: every step re-runs the
whole sequence through plain causal attention and takes the last position's logits.
Agreement with the executor therefore checks the sharding, the stage-to-stage
transfers, the paged cache, the decode kernel path and the scheduler together.
"""

from __future__ import annotations

import torch

from twinfer.exec.model import TORCH_DTYPES, Part, Transformer, packed_input
from twinfer.exec.tp import shard_state
from twinfer.exec.weights import SeededWeights, WeightSource
from twinfer.spec import ModelSpec


def reference_model(spec: ModelSpec, source: WeightSource | None = None, seed: int = 0,
                    device: str = "cpu") -> Transformer:
    """The whole model on one device, with ``source``'s weights (default: seeded)."""
    dev = torch.device(device)
    source = source or SeededWeights(spec, seed, dev, TORCH_DTYPES[spec.dtype])
    part = Part.whole(spec)
    model = Transformer(spec, part, device=dev).load(shard_state(spec, part, (0, 1), source))
    return model.requires_grad_(False)


@torch.inference_mode()
def greedy_reference(model: Transformer, prompt: list[int],
                     max_new: int) -> tuple[list[int], torch.Tensor]:
    """Greedy generation without a cache: (tokens, fp32 logits [max_new, vocab])."""
    ids, rows = list(prompt), []
    device = model.rope.device
    for _ in range(max_new):
        x = torch.tensor(ids, dtype=torch.int64, device=device)
        logits = model(x, packed_input([len(ids)], device),
                       logits_rows=torch.tensor([len(ids) - 1], device=device))
        rows.append(logits[0])
        ids.append(int(logits[0].argmax()))
    return ids[len(prompt):], torch.stack(rows)
