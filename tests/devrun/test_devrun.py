"""`python -m modelcache.devrun` (what `make run` starts), run whole as a real process: origin,
coordinator and three agents come up, the example model lands on every node byte for byte, and
everything stops cleanly; a part that fails is named with its log."""

from __future__ import annotations

import filecmp
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from modelcache.contract.storage_keys import storage_key
from modelcache.devrun.watching import NOT_SEEN, NodeProgress, all_downloaded, progress_of

PROJECT_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = PROJECT_ROOT / "examples"
SOURCE = "hf://meta-llama/meta-llama-3-8b-instruct"
NODES = (("gpu-a100-0", "a100"), ("gpu-a100-1", "a100"), ("gpu-h100-0", "h100"))


def _processes_under(folder: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(str(folder) in part for part in process.info["cmdline"] or ()):
            found.append(process)
    return found


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[Path]:
    """Where the run keeps everything; any process still naming it afterwards fails the test."""
    folder = tmp_path / ".run"
    yield folder
    left = _processes_under(folder)
    for process in left:
        process.kill()
    assert not left, f"processes left running: {[p.info['cmdline'] for p in left]}"


def _devrun(cwd: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    argv = [sys.executable, "-m", "modelcache.devrun", "--coordinator-port", "0", *args]
    with subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGTERM)  # the run stops its children itself
            stdout, stderr = process.communicate(timeout=20)
            pytest.fail(f"the dev run did not finish in {timeout} s:\n{stdout}\n{stderr}")
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


def test_the_example_model_lands_on_every_node(tmp_path: Path, run_dir: Path) -> None:
    result = _devrun(
        tmp_path,
        "--run-dir",
        str(run_dir),
        "--examples",
        str(EXAMPLES),
        "--rate-per-connection",
        "32Mi",
        "--exit-when-ready",
        timeout=40,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for node, group in NODES:
        assert f"{node} ({group}): NodeDownloaded, 40.0 MiB of 40.0 MiB" in out
    assert "all 3 nodes NodeDownloaded" in out
    cache_row = next(line for line in out.splitlines() if line.startswith("meta-llama3-8b"))
    assert cache_row.split()[1:4] == ["3/3", "a100:2/2,h100:1/1", "40Mi"]
    assert f"{run_dir.resolve()}/logs" in out
    assert out.rstrip().endswith("stopped")

    origin = run_dir / "origin" / "meta-llama--meta-llama-3-8b-instruct"
    served = sorted(p.name for p in origin.iterdir() if p.is_file())
    assert served == ["config.json", "model.safetensors", "tokenizer.json"]
    assert sum((origin / name).stat().st_size for name in served) == 40 * 1024 * 1024
    for node, _ in NODES:
        model = run_dir / "agents" / node / "models" / storage_key(SOURCE)
        assert sorted(p.name for p in model.iterdir()) == served, node
        _, mismatch, errors = filecmp.cmpfiles(origin, model, served, shallow=False)
        assert (mismatch, errors) == ([], []), node
    assert not (run_dir / "pids").exists()


def test_a_part_that_fails_is_named_with_its_log(tmp_path: Path, run_dir: Path) -> None:
    examples = tmp_path / "examples"
    examples.mkdir()
    cache = (EXAMPLES / "localmodelcache.yaml").read_text()
    (examples / "cache.yaml").write_text(cache.replace("modelSize: 40Mi", "modelSize: 1Ki"))
    result = _devrun(tmp_path, "--run-dir", str(run_dir), "--examples", str(examples), timeout=30)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "error: origin exited with code 2" in result.stderr
    assert "the end of" in result.stderr
    assert "--demo-size: a demo model needs at least" in result.stderr  # from the origin's log
    assert result.stdout.rstrip().endswith("stopped")


def test_examples_without_a_cache_are_refused(tmp_path: Path, run_dir: Path) -> None:
    examples = tmp_path / "examples"
    examples.mkdir()
    (examples / "groups.yaml").write_text((EXAMPLES / "nodegroups.yaml").read_text())
    result = _devrun(tmp_path, "--run-dir", str(run_dir), "--examples", str(examples), timeout=20)
    assert result.returncode == 2
    assert "holds 0 LocalModelCaches" in result.stderr
    assert not run_dir.exists()


def test_progress_rows_follow_the_cache_status() -> None:
    cache = {
        "status": {
            "nodeStatus": {"gpu-a100-0": "NodeDownloaded", "gpu-a100-1": "NodeDownloading"},
            "nodeProgress": {
                "gpu-a100-0": {"bytesDone": 100, "bytesTotal": 100},
                "gpu-a100-1": {"bytesDone": 40, "bytesTotal": 100},
            },
        }
    }
    rows = progress_of(cache, NODES, model_size=99)
    assert rows == [
        NodeProgress("gpu-a100-0", "a100", "NodeDownloaded", 100, 100),
        NodeProgress("gpu-a100-1", "a100", "NodeDownloading", 40, 100),
        NodeProgress("gpu-h100-0", "h100", NOT_SEEN, 0, 99),
    ]
    assert not all_downloaded(rows)
    assert all_downloaded(rows[:1])
    assert progress_of(None, NODES[:1], model_size=5) == [
        NodeProgress("gpu-a100-0", "a100", NOT_SEEN, 0, 5)
    ]
