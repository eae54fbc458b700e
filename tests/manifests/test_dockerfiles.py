"""The two images: hadolint-clean, multi-stage, non-root with the UID the manifests use, and
exposing the ports the manifests declare."""

from __future__ import annotations

import re
import tomllib

import pytest

from tests.manifests.tools import DAEMONSET, REPO, render, run, tool

IMAGES = {
    "agent": ("modelcache-agent", "DaemonSet"),
    "coordinator": ("modelcache-coordinator", "Deployment"),
}


def _instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    lines = [line.strip() for line in joined.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def test_hadolint_finds_nothing() -> None:
    files = [str(REPO / f"Dockerfile.{name}") for name in IMAGES]
    result = run(tool("hadolint"), "--failure-threshold", "info", *files)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_image_matches_the_project_and_the_manifests(name: str) -> None:
    script, kind = IMAGES[name]
    steps = _instructions((REPO / f"Dockerfile.{name}").read_text())
    stages = [i for i, (op, _) in enumerate(steps) if op == "FROM"]
    assert len(stages) == 2, "a builder stage and a slim final stage"
    final = steps[stages[-1] :]
    assert ("USER", "10001:10001") in final
    assert not any(op == "RUN" and re.search(r"apt-get|gcc|build-essential", a) for op, a in final)
    entrypoint = dict(final)["ENTRYPOINT"]
    assert entrypoint == f'["{script}"]'
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert script in scripts
    exposed = {int(p) for op, a in final if op == "EXPOSE" for p in a.split()}
    workload = next(  # every agent DaemonSet runs the same image: the first will do
        d
        for d in render(DAEMONSET)
        if d["kind"] == kind and d["metadata"]["name"].startswith(script)
    )
    declared = {
        p["containerPort"]
        for c in workload["spec"]["template"]["spec"]["containers"]
        for p in c["ports"]
    }
    assert exposed == declared
