"""Collectives a calibration run could not measure: datasheet-derived fallbacks.

A machine with one GPU measures no collective, and no single machine measures
InfiniBand between nodes; yet a profile without a link kind makes every scenario that
uses it fail. ``fill_unmeasured_links`` adds, for each link kind the device family is
built with and each collective at 2 ranks that the profile lacks, an alpha-beta line
from the link's datasheet, marked as such (``fallback``, shown in every prediction's
provenance, and a line in ``notes``):

- **bandwidth**: the datasheet's per-direction bus bandwidth (NVLink 4: 18 links x 25
  GB/s = 450 GB/s; NDR InfiniBand: 400 Gb/s = 50 GB/s per GPU), turned into the
  profile's per-tensor ``bytes_per_s`` by NCCL's ring traffic factor
  (``cost.ring_traffic``: bus bytes per tensor byte). This is the ceiling; measured
  NCCL reaches about two thirds of it (H200 NVLink all-reduce: 296 GB/s);
- **latency**: the same op's alpha as measured on another shipped profile over the
  same link generation (H100 and H200 share NVLink 4: NCCL's small-message latency is
  a property of the fabric and the library, not of the GPU's memory), else the
  datasheet-level estimate below.

Measured lines are never replaced; other group sizes are derived by the cost model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from twinfer.sim.cost import ring_traffic
from twinfer.sim.profile import COLLECTIVE_OPS


@dataclass(frozen=True)
class LinkSheet:
    link: str  # the profile's link kind
    generation: str
    busbw_bytes_per_s: float  # per direction, per GPU
    alpha_s: float  # used only when no profile of the generation measured the op
    source: str


NVLINK4 = LinkSheet("nvlink", "NVLink 4", 450e9, 25e-6,
                    "NVLink 4: 18 links x 25 GB/s = 450 GB/s per direction")
NVLINK3 = LinkSheet("nvlink", "NVLink 3", 300e9, 25e-6,
                    "NVLink 3: 12 links x 25 GB/s = 300 GB/s per direction")
NDR = LinkSheet("infiniband", "NDR InfiniBand", 50e9, 10e-6,
                "NDR InfiniBand: 400 Gb/s = 50 GB/s per GPU per direction")
HDR = LinkSheet("infiniband", "HDR InfiniBand", 25e9, 10e-6,
                "HDR InfiniBand: 200 Gb/s = 25 GB/s per GPU per direction")

# the links each device family is deployed with (profile names start with the family)
FAMILY_LINKS: dict[str, tuple[LinkSheet, ...]] = {
    "h100": (NVLINK4, NDR),
    "h200": (NVLINK4, NDR),
    "a100": (NVLINK3, HDR),
}
FALLBACK_RANKS = "2"


def family_links(name: str) -> tuple[LinkSheet, ...]:
    """The datasheet links of a profile's device family (none if unknown)."""
    return next((links for fam, links in FAMILY_LINKS.items() if name.startswith(fam)), ())


def _measured_alpha(sheet: LinkSheet, op: str, siblings: dict[str, dict]) -> tuple[float, str]:
    """The op's alpha as another profile of the same link generation measured it."""
    for name, other in sorted(siblings.items()):
        if sheet not in family_links(name):
            continue
        fit = other.get("collectives", {}).get(sheet.link, {}).get(op, {}).get(FALLBACK_RANKS)
        if fit and fit.get("samples"):
            return fit["alpha_s"], f"alpha as measured on {name} ({sheet.generation})"
    return sheet.alpha_s, f"alpha {sheet.alpha_s * 1e6:g} us estimated (none measured)"


def fill_unmeasured_links(profile: dict, siblings: dict[str, dict]) -> list[str]:
    """Add datasheet-derived lines for the collectives ``profile`` lacks (module doc);
    ``siblings``: other profiles by name, for measured latencies. Returns what was
    added (``link/op/ranks``), each also named in ``profile['notes']``."""
    added = []
    colls = profile.setdefault("collectives", {})
    for sheet in family_links(profile["name"]):
        by_op = colls.setdefault(sheet.link, {})
        for op in COLLECTIVE_OPS:
            if FALLBACK_RANKS in by_op.get(op, {}):
                continue
            alpha, alpha_why = _measured_alpha(sheet, op, siblings)
            traffic = ring_traffic(op, int(FALLBACK_RANKS))
            why = (f"DATASHEET-DERIVED ({sheet.source}; / ring traffic {traffic:g} -> "
                   f"{sheet.busbw_bytes_per_s / traffic / 1e9:.0f} GB/s per tensor; "
                   f"{alpha_why}), not measured")
            by_op.setdefault(op, {})[FALLBACK_RANKS] = {
                "alpha_s": alpha, "bytes_per_s": sheet.busbw_bytes_per_s / traffic,
                "samples": [], "residual_rel": 0.0, "fallback": why}
            added.append(f"{sheet.link}/{op}/{FALLBACK_RANKS}")
        if not by_op:
            del colls[sheet.link]
    if added:
        profile.setdefault("notes", []).append(
            f"collectives not measured here (calibrated on fewer GPUs or one node), "
            f"datasheet-derived fallbacks: {', '.join(added)}; each line's `fallback` "
            "says whence (twinfer.calibration.links)")
    return added


def shipped_siblings(exclude: str, directory: Path) -> dict[str, dict]:
    """The other shipped profiles, by name (their measured collectives lend latencies)."""
    out = {}
    for path in sorted(Path(directory).glob("*.json")):
        doc = json.loads(path.read_text())
        if doc.get("name") != exclude and doc.get("source") == "measured":
            out[doc["name"]] = doc
    return out


def fill_profile_links(path: Path, directory: Path | None = None) -> list[str]:
    """``fill_unmeasured_links`` on a profile file, written back through the validating
    writer. ``directory``: where sibling profiles are (default: the shipped ones)."""
    from twinfer.calibration import PROFILES_DIR
    from twinfer.calibration.profile_build import read_profile_dict, write_profile

    profile = read_profile_dict(path)
    added = fill_unmeasured_links(profile, shipped_siblings(profile["name"],
                                                            directory or PROFILES_DIR))
    if added:
        write_profile(profile, path)
    return added
