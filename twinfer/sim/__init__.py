"""The digital twin: profile-driven cost model, SimPy engine, closed-form fast path.

``simulate(scenario)`` runs the SimPy engine; ``estimate(scenario)`` the closed-form
fast path; both read GPU profiles (``load_profile``) through the same cost model.
Imports no torch, triton, MPI or streamlit.
"""

from twinfer.sim.profile import Profile, load_profile, save_profile, shipped_profiles
from twinfer.sim.results import SimResult, Stat
from twinfer.sim.simulate import simulate
from twinfer.sim.twin import Twin, build_twin, resolve_profiles

__all__ = ["Profile", "SimResult", "Stat", "Twin", "build_twin", "load_profile",
           "resolve_profiles", "save_profile", "shipped_profiles", "simulate"]
