"""The partial file of a calibration run: what it has finished, kept across interruptions.

Samples are grouped (one GEMM shape over all m, one head configuration over all
contexts, one collective at one group size over all sizes). After each group the
whole partial file is rewritten atomically (a temporary file, then ``os.replace``), so
a run killed at any moment leaves either the old or the new file, never half of one.
A rerun with the same fingerprint (device, dtype, options) skips the groups already
there and keeps their samples as they were; a different fingerprint starts afresh.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twinfer.spec.io import write_json_atomic

PARTIAL_VERSION = 1


def partial_path(out: Path) -> Path:
    """Where the partial file of a run writing ``out`` lives."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


class PartialStore:
    """Finished sample groups of one calibration run, keyed by group name."""

    def __init__(self, path: Path, fingerprint: dict[str, Any]) -> None:
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.groups: dict[str, dict[str, Any]] = {}
        self.resumed = 0
        self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return
        if (not isinstance(data, dict) or data.get("version") != PARTIAL_VERSION
                or data.get("fingerprint") != self.fingerprint):
            return
        groups = data.get("groups")
        if isinstance(groups, dict):
            self.groups = groups
            self.resumed = len(groups)

    def reload(self) -> None:
        """Re-read the file (another process, e.g. the collectives job, added groups)."""
        self.groups = {}
        self._load()

    def done(self, key: str) -> bool:
        return key in self.groups

    def add(self, key: str, group: dict[str, Any]) -> None:
        """Record a finished group and persist the whole file atomically."""
        self.groups[key] = group
        write_json_atomic(self.path, {"version": PARTIAL_VERSION,
                                      "fingerprint": self.fingerprint,
                                      "groups": self.groups})

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        """Finished groups of one kind (``gemm``, ``collective``, ...) in insertion order."""
        return [g for g in self.groups.values() if g.get("kind") == kind]

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
