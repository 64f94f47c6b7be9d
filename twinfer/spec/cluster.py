"""Cluster description: nodes of GPUs of named types, and the links between them.

GPUs get global ids in node order: node 0's GPUs are 0..count-1, node 1's follow.
A GPU type names a calibration profile (``h100-sxm``, ``h200-sxm``, ``a100-sxm-80g``,
``cpu``, or a profile file the scenario points to). Links are by kind: the link
inside a node (``nvlink`` or ``pcie``) and the one between nodes (``infiniband``
or ``ethernet``). Their bandwidth and latency come from the profile's fitted
collectives unless the scenario overrides them here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

LinkKind = Literal["nvlink", "pcie", "infiniband", "ethernet", "shm"]


class LinkSpec(BaseModel):
    """An override of one link kind's alpha-beta parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bw_gbps: float = Field(gt=0, description="one-direction bandwidth per GPU, GB/s")
    latency_us: float = Field(ge=0, description="per-message latency, microseconds")


class NodeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = ""
    gpu: str = Field(description="GPU type = profile name, e.g. h200-sxm")
    count: int = Field(ge=1, le=1024)
    intra_link: LinkKind = "nvlink"


class ClusterSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    nodes: list[NodeSpec] = Field(min_length=1)
    inter_link: LinkKind = "infiniband"
    links: dict[LinkKind, LinkSpec] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> ClusterSpec:
        names = [n.name for n in self.nodes if n.name]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"node name {sorted(dup)[0]!r} is used twice; give each node its "
                             "own name")
        return self

    @property
    def num_gpus(self) -> int:
        return sum(n.count for n in self.nodes)

    def gpu_node(self, gpu: int) -> int:
        """Index of the node that holds global GPU id ``gpu``."""
        start = 0
        for i, node in enumerate(self.nodes):
            if gpu < start + node.count:
                return i
            start += node.count
        raise IndexError(gpu)

    def gpu_type(self, gpu: int) -> str:
        return self.nodes[self.gpu_node(gpu)].gpu

    def gpu_types(self) -> list[str]:
        """The GPU type of every global GPU id, in id order."""
        return [node.gpu for node in self.nodes for _ in range(node.count)]

    def link_between(self, gpus: list[int] | tuple[int, ...]) -> LinkKind:
        """The slowest link kind a group of GPUs communicates over."""
        nodes = {self.gpu_node(g) for g in gpus}
        if len(nodes) > 1:
            return self.inter_link
        return self.nodes[nodes.pop()].intra_link if nodes else "nvlink"


def single_node(gpu: str, count: int, intra_link: LinkKind = "nvlink") -> ClusterSpec:
    return ClusterSpec(nodes=[NodeSpec(name="node0", gpu=gpu, count=count,
                                       intra_link=intra_link)])
