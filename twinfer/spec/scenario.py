"""A scenario: model + cluster + layout + workload + scheduler, loaded from YAML.

Loading is strict: unknown keys, impossible layouts and GPUs the cluster lacks are
a ``SpecError`` naming the field and the fix. Memory fit needs the GPU profiles and
is checked by the twin (``twinfer.sim.memory``), which raises the same error type.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from twinfer.spec.cluster import ClusterSpec
from twinfer.spec.errors import SpecError, pydantic_to_spec_error
from twinfer.spec.layout import LayoutSpec, Placement, placement
from twinfer.spec.model import ModelSpec, resolve_model
from twinfer.spec.workload import Request, SchedulerSpec, WorkloadSpec, requests_from

_TOP_KEYS = {"name", "description", "model", "cluster", "layout", "workload", "scheduler",
             "profiles", "baseline", "sweep"}


class SweepSpec(BaseModel):
    """Re-run the scenario for each value of one workload field (e.g. prompt length)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt_tokens: list[int] = Field(default_factory=list)
    output_tokens: list[int] = Field(default_factory=list)
    requests: list[int] = Field(default_factory=list)


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    name: str = "scenario"
    description: str = ""
    model: ModelSpec
    cluster: ClusterSpec
    layout: LayoutSpec
    workload: WorkloadSpec = WorkloadSpec()
    scheduler: SchedulerSpec = SchedulerSpec()
    profiles: dict[str, str] = Field(
        default_factory=dict, description="GPU type -> profile JSON path (else shipped)")
    baseline: LayoutSpec | None = Field(None, description="a layout to compare against")
    sweep: SweepSpec | None = None
    base_dir: str = Field("", exclude=True, description="where relative paths resolve")

    def placement(self) -> Placement:
        return placement(self.layout, self.model, self.cluster)

    def requests(self) -> list[Request]:
        return requests_from(self.workload, Path(self.base_dir) if self.base_dir else None)

    def with_layout(self, layout: object) -> Scenario:
        """The same scenario on another layout (validated: a new object)."""
        return scenario_from_dict({**self.to_dict(), "layout": _dump(layout)},
                                  base_dir=self.base_dir or None)

    def to_dict(self) -> dict[str, Any]:
        data = self.model_dump(mode="json", exclude_none=True, exclude={"base_dir"})
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _dump(obj: object) -> object:
    return obj.model_dump(mode="json", exclude_none=True) if isinstance(obj, BaseModel) else obj


def scenario_from_dict(data: object, base_dir: str | Path | None = None) -> Scenario:
    """Validate a scenario mapping (already parsed from YAML)."""
    if not isinstance(data, dict):
        raise SpecError("scenario", "the document is not a mapping",
                        "write keys model, cluster, layout, workload at the top level")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise SpecError(unknown[0], "unknown key", f"allowed keys: {', '.join(sorted(_TOP_KEYS))}")
    for key in ("model", "cluster", "layout"):
        if key not in data:
            raise SpecError(key, "required key is missing", "add it (see scenarios/*.yaml)")
    base = Path(base_dir) if base_dir else None
    fields = dict(data)
    fields["model"] = resolve_model(data["model"], base)
    if base is not None:
        fields["base_dir"] = str(base)
    try:
        scenario = Scenario(**fields)
    except ValidationError as exc:
        raise pydantic_to_spec_error(exc) from None
    scenario.placement()  # raises SpecError for impossible layouts
    if scenario.baseline is not None:
        try:
            placement(scenario.baseline, scenario.model, scenario.cluster)
        except SpecError as exc:
            raise SpecError("baseline." + exc.field.removeprefix("layout."), exc.problem,
                            exc.fix) from None
    return scenario


def load_scenario(source: str | Path) -> Scenario:
    """Load a scenario from a YAML path, or the name of a shipped scenario."""
    path = Path(source)
    if not path.exists():
        shipped = shipped_scenarios()
        if str(source) in shipped:
            path = shipped[str(source)]
        else:
            raise SpecError("scenario", f"{source} is neither a file nor a shipped scenario",
                            f"give a YAML path or one of: {', '.join(sorted(shipped))}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(str(path), f"malformed YAML{where}",
                        "fix the syntax (indentation, colons, quotes)") from None
    except OSError as exc:
        raise SpecError(str(path), f"cannot be read ({exc.strerror})", "check the path") from None
    scenario = scenario_from_dict(data, base_dir=path.parent)
    if scenario.name == "scenario":
        scenario = scenario.model_copy(update={"name": path.stem})
    return scenario


def scenarios_dir() -> Path:
    """The shipped scenarios: the repository's scenarios/ or the installed copy."""
    repo = Path(__file__).resolve().parents[2] / "scenarios"
    if repo.is_dir():
        return repo
    return Path(str(resources.files("twinfer") / "scenarios"))


def shipped_scenarios() -> dict[str, Path]:
    folder = scenarios_dir()
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


DEFAULT_SCENARIO = "llama3_8b_h200_tp2"
