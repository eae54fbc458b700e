"""`python -m modelcache.origin` as a process: demo generation, readiness, clean SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp

from modelcache.origin.synthetic import DEMO_REPO_ID, default_demo_files

PROJECT_ROOT = Path(__file__).resolve().parents[2]


async def test_serves_the_demo_until_sigterm(tmp_path: Path) -> None:
    ready = tmp_path / "origin.url"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "modelcache.origin",
        "--generate-demo",
        str(tmp_path / "demo"),
        "--ready-file",
        str(ready),
        "--token",
        "t0k",
        "--gated",
        DEMO_REPO_ID,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(20):
            while not (line := (await process.stdout.readline()).decode()).startswith("origin "):
                assert line, "the origin exited before it was ready"
        assert line.startswith("origin listening on http://127.0.0.1:")
        url = line.split()[-1]
        assert ready.read_text().strip() == url

        async with aiohttp.ClientSession() as session:
            info_url = f"{url}/api/models/{DEMO_REPO_ID}/revision/main"
            async with session.get(info_url) as response:
                assert response.status == 401
            auth = {"Authorization": "Bearer t0k"}
            async with session.get(info_url, headers=auth) as response:
                info = await response.json()
        assert sorted(s["rfilename"] for s in info["siblings"]) == sorted(default_demo_files())
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    assert b"origin stopping" in stdout


async def test_bad_arguments_exit_with_usage(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "modelcache.origin",
        "--repo",
        "not-a-repo-id=" + str(tmp_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
    )
    async with asyncio.timeout(10):
        _, stderr = await process.communicate()
    assert process.returncode == 2
    assert b"OWNER/MODEL=DIR" in stderr
