"""Which code a benchmark measured: figures are only comparable with the commit beside them."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def measured_revision() -> str:
    """The commit, and whether modelcache/ differs from it (the code may be edited live)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "modelcache"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "an unknown revision (no git)"
    return f"{commit or 'unknown'}{' + uncommitted changes in modelcache/' if changed else ''}"
