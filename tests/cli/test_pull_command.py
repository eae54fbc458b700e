"""`modelcache pull` as a user runs it: a real subprocess against the in-process origin."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sys
from pathlib import Path

from modelcache.cli.progress_display import ProgressDisplay
from modelcache.pulling import PullProgress
from modelcache.pulling.journaling import read_records
from modelcache.pulling.planning import plan_chunks
from tests.hub_origin import REPO_FILES, HubFixture, tree_of

URI = "hf://acme/tiny-model"


async def run_cli(
    hub: HubFixture, *args: str, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "modelcache",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "HF_ENDPOINT": hub.url, **(env or {})},
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_success_prints_one_summary_line_and_rerun_is_up_to_date(
    hub: HubFixture, tmp_path: Path
) -> None:
    dest = tmp_path / "model"
    code, out, err = await run_cli(
        hub, "pull", URI, str(dest), "--chunk-size", "256Ki", "--min-free", "0"
    )
    assert code == 0, err
    assert tree_of(dest) == tree_of(hub.source_dir)
    assert out.count("\n") == 1
    assert "pulled hf://acme/tiny-model" in out
    assert "MB/s" in out
    code, out, _ = await run_cli(hub, "pull", URI, str(dest), "--min-free", "0")
    assert code == 0
    assert out.startswith("up to date:")


async def test_bad_usage_exits_2_and_failures_exit_1_with_one_error_line(
    hub: HubFixture, tmp_path: Path
) -> None:
    code, _, err = await run_cli(hub, "pull", "hf://only-owner", str(tmp_path / "x"))
    assert code == 2
    assert "hf://OWNER/MODEL" in err
    code, _, err = await run_cli(hub, "pull", URI, str(tmp_path / "x"), "--chunk-size", "lots")
    assert code == 2
    assert "--chunk-size 'lots' is not a byte size" in err
    code, _, err = await run_cli(hub, "pull", URI, str(tmp_path / "x"), "--concurrency", "0")
    assert code == 2
    code, _, err = await run_cli(hub, "pull")
    assert code == 2
    code, out, err = await run_cli(hub, "pull", "hf://acme/missing", str(tmp_path / "x"))
    assert code == 1
    assert out == ""
    errors = [line for line in err.splitlines() if line.startswith("modelcache: error:")]
    assert len(errors) == 1
    assert "repository not found" in errors[0]
    assert not (tmp_path / "x").exists()


async def test_settings_come_from_modelcache_env_when_no_flag(
    hub: HubFixture, tmp_path: Path
) -> None:
    code, _, err = await run_cli(
        hub, "pull", URI, str(tmp_path / "x"), env={"MODELCACHE_CHUNK_SIZE": "nonsense"}
    )
    assert code == 2
    assert "nonsense" in err


async def start_throttled_pull(
    hub: HubFixture, dest: Path, *, concurrency: int, journalled: int
) -> asyncio.subprocess.Process:
    """A CLI pull slowed to 1 MiB/s per connection, returned once `journalled` chunks are done."""
    hub.origin.per_connection_rate = 1 << 20
    journal = dest.parent / f".{dest.name}.partial" / "journal"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "modelcache",
        "pull",
        URI,
        str(dest),
        "--chunk-size",
        "256Ki",
        "--concurrency",
        str(concurrency),
        "--min-free",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "HF_ENDPOINT": hub.url},
    )
    async with asyncio.timeout(30):
        while len(read_records(journal)) < journalled:
            await asyncio.sleep(0.05)
    return proc


async def test_kill_9_mid_pull_then_rerun_resumes_and_refetches_only_in_flight_chunks(
    hub: HubFixture, tmp_path: Path
) -> None:
    chunk, concurrency = 256 * 1024, 4
    dest = tmp_path / "model"
    proc = await start_throttled_pull(hub, dest, concurrency=concurrency, journalled=8)
    proc.send_signal(signal.SIGKILL)
    await proc.communicate()
    assert not dest.exists()
    sent_before_kill = hub.data_bytes_sent()

    # What the journal vouches for, computed from the same plan the engine uses.
    paths = sorted(REPO_FILES)
    plan = plan_chunks([REPO_FILES[p] for p in paths], chunk)
    finished = read_records(tmp_path / ".model.partial" / "journal")
    journaled = sum(plan[f][c].length for f, c in finished)
    total = sum(REPO_FILES.values())
    assert 0 < journaled < total
    # Received but not journaled: at most the chunks that were in flight.
    assert sent_before_kill - journaled <= concurrency * chunk

    hub.origin.per_connection_rate = None
    hub.origin.stats.reset()
    code, out, err = await run_cli(
        hub, "pull", URI, str(dest), "--chunk-size", "256Ki", "--min-free", "0"
    )
    assert code == 0, err
    assert tree_of(dest) == tree_of(hub.source_dir)
    assert hub.data_bytes_sent() == total - journaled
    assert "resumed" in out


async def test_sigterm_stops_quickly_with_130_and_leaves_a_resumable_partial(
    hub: HubFixture, tmp_path: Path
) -> None:
    dest = tmp_path / "model"
    proc = await start_throttled_pull(hub, dest, concurrency=4, journalled=4)
    proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(5):
        _, err = await proc.communicate()
    assert proc.returncode == 130
    assert "run the same command again to resume" in err.decode()
    assert not dest.exists()
    assert read_records(tmp_path / ".model.partial" / "journal")


def test_plain_progress_lines_when_not_a_terminal() -> None:
    stream = io.StringIO()
    display = ProgressDisplay(stream, tty=False, interval=0.0)
    display(PullProgress("a.bin", 10, 100, 10, 200))
    display(PullProgress("a.bin", 100, 100, 100, 200))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert "of 200 B (50%)" in lines[1]
    assert "MB/s" in lines[1]


def test_progress_bar_on_a_terminal() -> None:
    stream = io.StringIO()
    display = ProgressDisplay(stream, tty=True)
    display(PullProgress("a.bin", 50, 100, 50, 100))
    display(PullProgress("a.bin", 100, 100, 100, 100))
    display.close()
    assert "100/100" in stream.getvalue()
