"""Fixtures of the dashboard tests: a profile with samples of every kind, a copy of
the shipped profiles it can join, and a repository layout with validation results."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from ui_data import DATA, RESULTS, fa_pool_paper_doc, sampled_profile_doc

from twinfer.sim import profile as sim_profile

__all__ = ["DATA", "RESULTS", "fa_pool_paper_doc", "sampled_profile_doc"]


@pytest.fixture
def profiles_dir(tmp_path, monkeypatch) -> Path:
    """The shipped profiles plus ``toy-sampled``, served as the shipped set."""
    folder = tmp_path / "profiles"
    shutil.copytree(sim_profile.profiles_dir(), folder)
    (folder / "toy-sampled.json").write_text(json.dumps(sampled_profile_doc()))
    monkeypatch.setattr(sim_profile, "profiles_dir", lambda: folder)
    return folder


@pytest.fixture
def validation_repo(tmp_path, monkeypatch) -> Path:
    """A repository root whose docs/validation holds one executor results JSON (and
    docs/overheads another, which the page leaves out)."""
    from twinfer.ui import validation

    root = tmp_path / "repo"
    for folder in ("validation", "overheads"):
        (root / "docs" / folder).mkdir(parents=True)
        shutil.copy(RESULTS, root / "docs" / folder / RESULTS.name)
    (root / "docs" / "validation" / "not_results.json").write_text('{"schema": "other"}')
    monkeypatch.setattr(validation, "REPO", root)
    return root
