"""Process groups of a placement: TP groups per stage, leader pairs between stages.

The placement (`twinfer.spec.placement`, the structure the twin also reads) is the
only input: global GPU id g is MPI rank g, so the groups follow the layout whatever
its shape - ``uniform`` (tp x pp x replicas) or ``hetero`` (HexGen: stages of one
pipeline with different TP degrees and layer counts).

HexGen's stage-to-stage scheme (Jiang et al., "HexGen: Generative Inference of Large
Language Model over Heterogeneous Environment", ICML 2024): every stage has a leader,
its first GPU. After the stage's last layer every TP rank holds the same hidden states;
only the leader sends them to the next stage's leader, which broadcasts them inside
its TP group. So stages of different TP degrees meet through one point-to-point
transfer. The last stage's leader samples the next tokens and drives the pipeline.

`dist.new_group` is a collective over the whole world: every rank creates every group
in the same order (all TP groups, then all leader pairs), including groups it is not
in. `Groups` is passed explicitly to whatever communicates; nothing here is global.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from twinfer.spec import PipelinePlan, Placement, SpecError, StagePlan

if TYPE_CHECKING:  # the launcher imports this module and should not pay for torch
    import torch.distributed as dist


@dataclass(frozen=True)
class Groups:
    """One rank's place in the layout and the groups it communicates in."""

    rank: int
    pipeline_index: int
    stage_index: int
    pipeline: PipelinePlan
    tp: dist.ProcessGroup | None  # None when the stage has a single GPU
    to_prev: dist.ProcessGroup | None  # leader pair (previous leader, this leader)
    to_next: dist.ProcessGroup | None  # leader pair (this leader, next leader)

    @property
    def stage(self) -> StagePlan:
        return self.pipeline.stages[self.stage_index]

    @property
    def tp_rank(self) -> int:
        return self.stage.gpus.index(self.rank)

    @property
    def tp_size(self) -> int:
        return self.stage.tp

    @property
    def leader(self) -> int:
        return self.stage.leader

    @property
    def is_leader(self) -> bool:
        return self.rank == self.stage.leader

    @property
    def is_first(self) -> bool:
        return self.stage_index == 0

    @property
    def is_last(self) -> bool:
        return self.stage_index == len(self.pipeline.stages) - 1

    @property
    def prev_leader(self) -> int:
        return self.pipeline.stages[self.stage_index - 1].leader

    @property
    def next_leader(self) -> int:
        return self.pipeline.stages[self.stage_index + 1].leader

    @property
    def driver(self) -> int:
        """The last stage's leader: it samples and schedules for the pipeline."""
        return self.pipeline.stages[-1].leader

    @property
    def is_driver(self) -> bool:
        return self.rank == self.driver


def ranks_needed(placement: Placement) -> int:
    """MPI ranks a placement needs: GPU id g runs on rank g, so max id + 1."""
    return max(placement.gpus) + 1


def check_world(placement: Placement, world: int) -> None:
    """Reject a launch whose rank count differs from what the layout needs."""
    need = ranks_needed(placement)
    if world != need:
        ids = sorted(placement.gpus)
        raise SpecError("layout", f"needs {need} ranks (GPU ids {ids[0]}..{ids[-1]}; GPU id g "
                        f"runs on MPI rank g) but {world} were launched",
                        f"launch with -n {need} (twinfer exec --np {need})")
    if placement.pool and (len(placement.pipelines) > 1
                           or len(placement.pipelines[0].stages) > 1):
        raise SpecError("layout.base", "the executor runs an FA Pool whose base is one "
                        "pipeline stage", "use a base with pp=1 and replicas=1")


def build_groups(placement: Placement, rank: int) -> Groups | None:
    """Create every group of the placement (collective) and return this rank's view.

    Returns None for a rank whose GPU id the placement does not use (it idles).
    """
    import torch.distributed as dist

    mine: Groups | None = None
    tp_groups: dict[tuple[int, int], dist.ProcessGroup | None] = {}
    for p, pipe in enumerate(placement.pipelines):
        for s, stage in enumerate(pipe.stages):
            group = dist.new_group(list(stage.gpus)) if stage.tp > 1 else None
            tp_groups[p, s] = group
    pairs: dict[tuple[int, int], dist.ProcessGroup] = {}
    for p, pipe in enumerate(placement.pipelines):
        for s in range(len(pipe.stages) - 1):
            pairs[p, s] = dist.new_group([pipe.stages[s].leader, pipe.stages[s + 1].leader])
    for p, pipe in enumerate(placement.pipelines):
        for s, stage in enumerate(pipe.stages):
            if rank in stage.gpus:
                mine = Groups(rank=rank, pipeline_index=p, stage_index=s, pipeline=pipe,
                              tp=tp_groups[p, s], to_prev=pairs.get((p, s - 1)),
                              to_next=pairs.get((p, s)))
    return mine
