"""Fixtures of the twin's tests (helpers live in sim_profiles.py: a module name of its
own, so that the whole suite can import it whatever other conftest was loaded first)."""

from __future__ import annotations

import pytest
from sim_profiles import make_profile

from twinfer.sim.profile import Profile


@pytest.fixture
def toy_profile() -> Profile:
    return make_profile()
