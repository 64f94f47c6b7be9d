"""Every shipped scenario against its golden result (tests/scenarios/golden/<name>.json).

The golden files are the twin's full JSON output (docs/OUTPUT.md) minus the wall
time, committed so that a reviewer can read what each scenario predicts and see any
change in a diff. Numbers must match to 1e-9 relative. After an intended change,
regenerate them and review the diff:

    TWINFER_UPDATE_GOLDEN=1 python -m pytest tests/scenarios
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from twinfer.sim import simulate
from twinfer.spec import shipped_scenarios

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("TWINFER_UPDATE_GOLDEN") == "1"
VOLATILE = {"wall_s", "twinfer"}  # differ from run to run / release to release
REL = 1e-9


def golden_view(result) -> dict:
    return {k: v for k, v in result.to_dict().items() if k not in VOLATILE}


def assert_matches(actual: object, expected: object, path: str = "") -> None:
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and set(actual) == set(expected), (
            f"{path}: keys differ: {sorted(set(actual) ^ set(expected))}")
        for key in expected:
            assert_matches(actual[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{path}: length"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_matches(a, e, f"{path}[{i}]")
    elif isinstance(expected, float) and not isinstance(actual, bool):
        assert isinstance(actual, int | float), f"{path}: {actual!r} is not a number"
        assert math.isclose(actual, expected, rel_tol=REL, abs_tol=1e-15), (
            f"{path}: {actual!r} != golden {expected!r}")
    else:
        assert actual == expected, f"{path}: {actual!r} != golden {expected!r}"


@pytest.mark.parametrize("name", sorted(shipped_scenarios()))
def test_shipped_scenario_matches_golden(name):
    view = golden_view(simulate(name))
    path = GOLDEN / f"{name}.json"
    if UPDATE:
        path.write_text(json.dumps(view, indent=1) + "\n")
        return
    if not path.exists():
        pytest.fail(f"no golden result for {name}: run TWINFER_UPDATE_GOLDEN=1 "
                    "python -m pytest tests/scenarios and commit the file")
    assert_matches(json.loads(json.dumps(view)), json.loads(path.read_text()), name)


def test_no_stale_golden_files():
    stale = {p.stem for p in GOLDEN.glob("*.json")} - set(shipped_scenarios())
    assert not stale, f"golden files without a scenario: {sorted(stale)}"
