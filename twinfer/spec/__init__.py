"""What the user describes: model, cluster, layout, workload, scenario.

Imports no torch, triton, MPI or streamlit: the twin installs and runs without them.
"""

from twinfer.spec.cluster import ClusterSpec, LinkSpec, NodeSpec, single_node
from twinfer.spec.errors import SpecError
from twinfer.spec.layout import (
    FaPoolLayout,
    HeteroLayout,
    KvShardedLayout,
    PipelinePlan,
    Placement,
    StagePlan,
    UniformLayout,
    check_tp,
    placement,
    split_layers,
)
from twinfer.spec.model import ModelSpec, model_from_hf_config, model_preset, preset_names
from twinfer.spec.scenario import (
    DEFAULT_SCENARIO,
    Scenario,
    load_scenario,
    scenario_from_dict,
    shipped_scenarios,
)
from twinfer.spec.workload import Request, SchedulerSpec, WorkloadSpec, requests_from

__all__ = [
    "DEFAULT_SCENARIO", "ClusterSpec", "FaPoolLayout", "HeteroLayout", "KvShardedLayout",
    "LinkSpec", "ModelSpec", "NodeSpec", "PipelinePlan", "Placement", "Request", "Scenario",
    "SchedulerSpec", "SpecError", "StagePlan", "UniformLayout", "WorkloadSpec", "check_tp",
    "load_scenario", "model_from_hf_config", "model_preset", "placement", "preset_names",
    "requests_from", "scenario_from_dict", "shipped_scenarios", "single_node", "split_layers",
]
