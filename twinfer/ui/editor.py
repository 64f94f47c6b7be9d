"""The What-if editor's model: a scenario as YAML text, and the preset fields the
widgets show and change.

The YAML text is the source of truth. ``read_presets`` reads what the widgets show
from a parsed document (``None`` where a field does not apply: a model described
inline, a mixed cluster, a length drawn from a distribution); ``write_preset``
returns a new document with one field changed and everything else as the user
wrote it. ``parse`` validates the text with ``twinfer.spec`` and turns any problem
into the one-line ``SpecError`` message the page shows inline. Imports no streamlit.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import yaml

from twinfer.spec import Scenario, SpecError, preset_names, scenario_from_dict
from twinfer.spec.scenario import scenarios_dir, shipped_scenarios

PRESET_FIELDS = ("model", "gpu", "gpus_per_node", "nodes", "tp", "pp", "replicas", "kv_comm",
                 "fa_threshold", "fa_pool", "requests", "prompt", "output", "arrival", "rate")
ARRIVALS = ("batch", "poisson")
KV_COMMS = ("allgather", "mpi", "fused")


@dataclass(frozen=True)
class Parsed:
    """A validated scenario, or the one-line reason it is not one."""

    scenario: Scenario | None
    doc: dict | None  # the parsed mapping (set whenever the text is valid YAML)
    error: str = ""


def shipped_yaml(name: str) -> str:
    """The text of a shipped scenario, as the user would open it."""
    return shipped_scenarios()[name].read_text()


def dump(doc: dict) -> str:
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=100)


def load_doc(text: str) -> dict:
    """Parse YAML text into a mapping; malformed text is a SpecError with its line."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "cannot be parsed"
        raise SpecError("scenario YAML", f"malformed YAML{where}: {problem}",
                        "fix the syntax (indentation, colons, quotes)") from None
    if not isinstance(doc, dict):
        raise SpecError("scenario YAML", "the document is not a mapping",
                        "write keys model, cluster, layout, workload at the top level")
    return doc


def parse(text: str) -> Parsed:
    """Validate scenario YAML (relative paths resolve against the shipped scenarios)."""
    try:
        doc = load_doc(text)
    except SpecError as exc:
        return Parsed(None, None, str(exc))
    try:
        return Parsed(scenario_from_dict(doc, base_dir=scenarios_dir()), doc)
    except SpecError as exc:
        return Parsed(None, doc, str(exc))


# ---- presets: document -> widget values ------------------------------------------------
def _model_preset(doc: dict) -> str | None:
    model = doc.get("model")
    if isinstance(model, str):
        return model if model in preset_names() else None
    if isinstance(model, dict) and isinstance(model.get("preset"), str):
        return model["preset"] if model["preset"] in preset_names() else None
    return None


def _same(values: list) -> object | None:
    return values[0] if values and all(v == values[0] for v in values) else None


def _length(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def read_presets(doc: dict) -> dict[str, object | None]:
    """What each preset widget shows for ``doc`` (``None``: not applicable here)."""
    nodes = [n for n in (doc.get("cluster") or {}).get("nodes") or [] if isinstance(n, dict)]
    layout = doc.get("layout") if isinstance(doc.get("layout"), dict) else {}
    kind = layout.get("kind", "uniform")
    base = layout.get("base") if isinstance(layout.get("base"), dict) else {}
    work = doc.get("workload") if isinstance(doc.get("workload"), dict) else {}
    arrival = work.get("arrival") if isinstance(work.get("arrival"), dict) else {"kind": "batch"}
    arrival_kind = arrival.get("kind", "batch")
    out: dict[str, object | None] = dict.fromkeys(PRESET_FIELDS)
    out.update(
        model=_model_preset(doc),
        gpu=_same([n.get("gpu") for n in nodes]),
        gpus_per_node=_same([n.get("count") for n in nodes]),
        nodes=len(nodes) or None,
        requests=_length(work.get("requests", 16)),
        prompt=_length(work.get("prompt_tokens", 512)),
        output=_length(work.get("output_tokens", 128)),
        arrival=arrival_kind if arrival_kind in ARRIVALS else None,
        rate=float(arrival["rate_per_s"]) if arrival_kind == "poisson" else None,
    )
    if kind == "uniform":
        out.update(tp=layout.get("tp", 1), pp=layout.get("pp", 1),
                   replicas=layout.get("replicas", 1))
    elif kind == "kv_sharded":
        out.update(tp=layout.get("tp", 2), replicas=layout.get("replicas", 1),
                   kv_comm=layout.get("comm", "allgather"))
    elif kind == "fa_pool":
        out.update(tp=base.get("tp", 1), pp=base.get("pp", 1),
                   fa_threshold=layout.get("threshold_tokens", 4096),
                   fa_pool=len(layout.get("pool_gpus") or []))
    return out


# ---- presets: widget value -> document ---------------------------------------------------
def write_preset(doc: dict, field: str, value: object) -> dict:
    """A copy of ``doc`` with one preset field set to ``value``."""
    if field not in PRESET_FIELDS:
        raise KeyError(field)
    doc = copy.deepcopy(doc)
    if field == "model":
        model = doc.get("model")
        if isinstance(model, dict) and "preset" in model:
            model["preset"] = value
        else:
            doc["model"] = value
    elif field in ("gpu", "gpus_per_node", "nodes"):
        _write_cluster(doc, field, value)
    elif field in ("tp", "pp", "replicas", "kv_comm", "fa_threshold", "fa_pool"):
        _write_layout(doc, field, value)
    else:
        _write_workload(doc, field, value)
    return doc


def _write_cluster(doc: dict, field: str, value: object) -> None:
    cluster = doc.setdefault("cluster", {})
    nodes = cluster.setdefault("nodes", [])
    if field == "nodes":
        count = int(value)  # type: ignore[arg-type]
        template = dict(nodes[-1]) if nodes else {"gpu": "h200-sxm", "count": 1}
        taken = {n.get("name") for n in nodes}
        while len(nodes) < count:
            name = f"node{len(nodes)}"
            while name in taken:
                name += "x"
            taken.add(name)
            nodes.append({**template, "name": name})
        del nodes[count:]
    else:
        key = "gpu" if field == "gpu" else "count"
        for node in nodes:
            node[key] = value


def _write_layout(doc: dict, field: str, value: object) -> None:
    layout = doc.setdefault("layout", {"kind": "uniform"})
    kind = layout.get("kind", "uniform")
    if kind == "fa_pool":
        base = layout.setdefault("base", {"tp": 1})
        if field in ("tp", "pp"):
            base[field] = value
            _fit_gpus(base)
        elif field == "fa_threshold":
            layout["threshold_tokens"] = value
        elif field == "fa_pool":
            layout["pool_gpus"] = _pool_ids(doc, base, int(value))  # type: ignore[arg-type]
        return
    key = "comm" if field == "kv_comm" else field
    layout[key] = value
    _fit_gpus(layout)


def _fit_gpus(layout: dict) -> None:
    """An explicit ``gpus`` list that no longer matches the degrees is dropped (the
    layout then takes the first GPUs), rather than left to fail validation."""
    gpus = layout.get("gpus")
    if gpus is None:
        return
    need = layout.get("tp", 1) * layout.get("pp", 1) * layout.get("replicas", 1)
    if len(gpus) != need:
        layout.pop("gpus")


def _pool_ids(doc: dict, base: dict, size: int) -> list[int]:
    """The first ``size`` GPU ids after the base's (the cluster may be too small:
    validation then names the problem)."""
    used = base.get("gpus") or list(range(base.get("tp", 1) * base.get("pp", 1)
                                          * base.get("replicas", 1)))
    start = max(used) + 1 if used else 0
    return list(range(start, start + size))


def _write_workload(doc: dict, field: str, value: object) -> None:
    work = doc.setdefault("workload", {})
    if field == "arrival":
        rate = (work.get("arrival") or {}).get("rate_per_s", 4.0)
        work["arrival"] = {"kind": "poisson", "rate_per_s": rate} if value == "poisson" \
            else {"kind": str(value)}
    elif field == "rate":
        work["arrival"] = {"kind": "poisson", "rate_per_s": float(value)}  # type: ignore[arg-type]
    else:
        key = {"requests": "requests", "prompt": "prompt_tokens",
               "output": "output_tokens"}[field]
        work[key] = int(value)  # type: ignore[call-overload]


def layout_label(layout: dict) -> str:
    """A short human name for a layout mapping (tables, legends, hover text)."""
    kind = layout.get("kind", "uniform")
    if kind == "uniform":
        parts = [f"TP{layout.get('tp', 1)}"]
        if layout.get("pp", 1) > 1:
            parts.append(f"PP{layout['pp']}")
        if layout.get("replicas", 1) > 1:
            parts.append(f"x{layout['replicas']}")
        return " ".join(parts)
    if kind == "kv_sharded":
        reps = layout.get("replicas", 1)
        return (f"KV-sharded TP{layout.get('tp', 2)} {layout.get('comm', 'allgather')}"
                + (f" x{reps}" if reps > 1 else ""))
    if kind == "fa_pool":
        base = layout_label({**layout.get("base", {}), "kind": "uniform"})
        return (f"FA Pool {base} + pool {len(layout.get('pool_gpus', []))} "
                f"@{layout.get('threshold_tokens', 4096)}")
    if kind == "hetero":
        pipes = [" + ".join(f"tp{len(s['gpus'])}x{s['layers']}L" for s in p["stages"])
                 for p in layout.get("pipelines", [])]
        return "hetero [" + " | ".join(pipes) + "]"
    return str(kind)

