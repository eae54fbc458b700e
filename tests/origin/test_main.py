"""`python -m modelcache.origin` as a process: demo generation, readiness, clean SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from modelcache.origin.synthetic import DEMO_REPO_ID, default_demo_files, demo_files

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")]),
    }


@contextlib.asynccontextmanager
async def serving_origin(tmp_path: Path, *args: str) -> AsyncIterator[tuple[str, list[str]]]:
    """A running origin's base URL and the lines it printed up to and including 'origin ...';
    on leaving, SIGTERM and a check that it stopped cleanly."""
    ready = tmp_path / "origin.url"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "modelcache.origin",
        "--ready-file",
        str(ready),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(),
    )
    try:
        assert process.stdout is not None
        lines = []
        async with asyncio.timeout(20):
            while not (line := (await process.stdout.readline()).decode()).startswith("origin "):
                assert line, "the origin exited before it was ready"
                lines.append(line)
        assert line.startswith("origin listening on http://127.0.0.1:")
        url = line.split()[-1]
        assert ready.read_text().strip() == url
        yield url, [*lines, line]
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    assert b"origin stopping" in stdout


async def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, object]:
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        return response.status, await response.json()


async def test_serves_the_demo_until_sigterm(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    async with serving_origin(
        tmp_path, "--generate-demo", str(demo), "--token", "t0k", "--gated", DEMO_REPO_ID
    ) as (url, _):
        info_url = f"{url}/api/models/{DEMO_REPO_ID}/revision/main"
        status, _ = await _get(info_url)
        assert status == 401
        status, info = await _get(info_url, {"Authorization": "Bearer t0k"})
    assert status == 200
    assert isinstance(info, dict)
    assert sorted(s["rfilename"] for s in info["siblings"]) == sorted(default_demo_files())
    assert sum(f.stat().st_size for f in demo.iterdir()) == 40 * 1024 * 1024


async def test_serves_the_demo_under_another_id_and_size(tmp_path: Path) -> None:
    demo, size, repo_id = tmp_path / "demo", 3_000_000, "meta-llama/meta-llama-3-8b-instruct"
    args = ("--generate-demo", str(demo), "--demo-repo-id", repo_id, "--demo-size", str(size))
    async with serving_origin(tmp_path, *args) as (url, _):
        status, tree = await _get(f"{url}/api/models/{repo_id}/tree/main?recursive=true")
        default_status, _ = await _get(f"{url}/api/models/{DEMO_REPO_ID}/revision/main")
    assert status == 200
    assert isinstance(tree, list)
    assert {entry["path"]: entry["size"] for entry in tree} == demo_files(size)
    assert sum(f.stat().st_size for f in demo.iterdir()) == size
    assert default_status == 404


async def test_a_demo_of_another_size_is_written_again(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    async with serving_origin(tmp_path, "--generate-demo", str(demo), "--demo-size", "2000000"):
        pass
    args = ("--generate-demo", str(demo), "--demo-size", "2500000")
    async with serving_origin(tmp_path, *args) as (_, lines):
        pass
    assert any(line.startswith("writing the demo model") for line in lines)
    assert {f.name: f.stat().st_size for f in demo.iterdir()} == demo_files(2_500_000)


async def _usage_error(tmp_path: Path, *args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "modelcache.origin",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(),
    )
    async with asyncio.timeout(10):
        _, stderr = await process.communicate()
    assert process.returncode == 2
    return stderr.decode()


async def test_bad_arguments_exit_with_usage(tmp_path: Path) -> None:
    assert "OWNER/MODEL=DIR" in await _usage_error(tmp_path, "--repo", f"not-a-repo-id={tmp_path}")
    demo = ("--generate-demo", str(tmp_path / "demo"))
    assert "--demo-repo-id wants OWNER/MODEL" in await _usage_error(
        tmp_path, *demo, "--demo-repo-id", "no-owner"
    )
    assert "--demo-size: a demo model needs at least" in await _usage_error(
        tmp_path, *demo, "--demo-size", "1000"
    )
    assert not (tmp_path / "demo").exists()
