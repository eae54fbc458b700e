"""Pull benchmark: modelcache vs huggingface_hub.snapshot_download vs a plain fsync'd disk write.

    .venv/bin/python -m bench.pull_bench [--file-size 512Mi] [--files 4] [--runs 3] [--cap 50MB/s]

Builds a synthetic repo (N large safetensors files plus small json files) once under --workdir,
serves it from the local Hub-compatible origin in its own process, and in the same run times,
alternating tools so drift hits all of them alike:

- ``dd`` writing the same number of bytes with ``conv=fsync`` (what the disk can take);
- ``modelcache pull`` (a subprocess, peak RSS from wait4);
- ``huggingface_hub.snapshot_download`` (what KServe's storage-initializer uses);

uncapped, then with the origin throttling each connection to --cap. Between runs it syncs and
waits for writeback to drain, so one run's dirty pages do not slow the next. Prints medians and
the ratios the targets are stated in.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from modelcache.contract.quantities import parse_bytes, parse_rate
from modelcache.origin.synthetic import write_synthetic_repo

REPO_ID = "bench/synthetic-model"
PY = sys.executable
SNAPSHOT_SCRIPT = """
import sys
from huggingface_hub import snapshot_download
snapshot_download(sys.argv[1], local_dir=sys.argv[2])
"""


@dataclass(frozen=True)
class Run:
    tool: str
    seconds: float
    peak_rss_mb: float


def main() -> int:
    args = _parse()
    workdir: Path = args.workdir
    repo_dir = workdir / "repo"
    files = {
        f"model-{i + 1:05d}-of-{args.files:05d}.safetensors": args.file_size
        for i in range(args.files)
    }
    files.update({"config.json": 1_500, "tokenizer.json": 900_000, "generation_config.json": 200})
    total = sum(files.values())
    _ensure_repo(repo_dir, files)
    print(
        f"repo: {len(files)} files, {total / 2**30:.2f} GiB, runs per tool: {args.runs}", flush=True
    )

    results: dict[str, dict[str, list[Run]]] = {}
    for label, cap in (("uncapped", None), (f"capped {args.cap_text}/conn", args.cap)):
        with _origin(repo_dir, cap, workdir) as url:
            runs: dict[str, list[Run]] = {"dd": [], "modelcache": [], "snapshot_download": []}
            for i in range(args.runs):
                for tool in runs:
                    if cap is not None and tool == "dd":
                        continue
                    dest = workdir / f"dest-{tool}"
                    _clean(dest)
                    _settle()
                    run = _time_tool(tool, url, dest, total)
                    runs[tool].append(run)
                    rate = total / run.seconds / 1e6
                    print(
                        f"  {label:>20} run {i + 1} {tool:>18}: {rate:7.1f} MB/s"
                        f"  {run.seconds:6.2f} s  peak RSS {run.peak_rss_mb:6.1f} MB",
                        flush=True,
                    )
                    _clean(dest)
            results[label] = runs
    _report(results, total)
    return 0


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--workdir", type=Path, default=Path("/tmp/modelcache-bench"))
    p.add_argument("--files", type=int, default=4)
    p.add_argument("--file-size", type=parse_bytes, default=parse_bytes("512Mi"))
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--cap", default="50MB/s")
    args = p.parse_args()
    args.cap_text = args.cap
    args.cap = parse_rate(args.cap)
    return args


def _ensure_repo(repo_dir: Path, files: dict[str, int]) -> None:
    marker = repo_dir / ".complete"
    wanted = repr(sorted(files.items()))
    if marker.exists() and marker.read_text() == wanted:
        return
    shutil.rmtree(repo_dir, ignore_errors=True)
    started = time.monotonic()
    write_synthetic_repo(repo_dir, files, seed=1)
    marker.write_text(wanted)
    print(f"wrote synthetic repo in {time.monotonic() - started:.1f} s", flush=True)


@contextmanager
def _origin(repo_dir: Path, rate: int | None, workdir: Path) -> Iterator[str]:
    ready = workdir / "origin.url"
    ready.unlink(missing_ok=True)
    cmd = [
        PY,
        "-m",
        "modelcache.origin",
        "--repo",
        f"{REPO_ID}={repo_dir}",
        "--ready-file",
        str(ready),
    ]
    if rate:
        cmd += ["--rate-per-connection", str(rate)]
    # The marker file is not part of the served repo: move it aside while serving.
    marker = repo_dir / ".complete"
    saved = marker.read_text()
    marker.unlink()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300  # hashing 2 GiB takes a few seconds
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("origin did not start")
            time.sleep(0.2)
        yield ready.read_text().strip()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        marker.write_text(saved)


def _time_tool(tool: str, url: str, dest: Path, total: int) -> Run:
    env = {
        **os.environ,
        "HF_ENDPOINT": url,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    if tool == "dd":
        dest.mkdir(parents=True)
        mib = total // 2**20
        cmd = [
            "dd",
            "if=/dev/zero",
            f"of={dest / 'blob'}",
            "bs=1M",
            f"count={mib}",
            "conv=fsync",
            "status=none",
        ]
    elif tool == "modelcache":
        cmd = [PY, "-m", "modelcache", "pull", f"hf://{REPO_ID}", str(dest), "--min-free", "0"]
    else:
        cmd = [PY, "-c", SNAPSHOT_SCRIPT, REPO_ID, str(dest)]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{tool} failed with exit code {proc.returncode}")
    if tool == "snapshot_download":
        # snapshot_download does not fsync; give it the same durability cost the others pay.
        subprocess.run(["sync"], check=True)
        seconds = time.monotonic() - started
    return Run(tool, seconds, usage.ru_maxrss / 1024)


def _settle() -> None:
    """Flush dirty pages and wait until writeback is idle, so runs do not tax each other."""
    subprocess.run(["sync"], check=True)
    for _ in range(50):
        dirty = _meminfo("Dirty") + _meminfo("Writeback")
        if dirty < 16 * 1024:  # KiB
            break
        time.sleep(0.2)
    time.sleep(1.0)


def _meminfo(field: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _clean(dest: Path) -> None:
    shutil.rmtree(dest, ignore_errors=True)
    for sidecar in dest.parent.glob(f".{dest.name}.*"):
        if sidecar.is_dir():
            shutil.rmtree(sidecar, ignore_errors=True)
        else:
            sidecar.unlink()


def _report(results: dict[str, dict[str, list[Run]]], total: int) -> None:
    print("\nmedians (MB/s = 10^6 bytes/s; snapshot_download timed through a final sync)")
    rates: dict[tuple[str, str], float] = {}
    for label, runs in results.items():
        for tool, tool_runs in runs.items():
            if not tool_runs:
                continue
            seconds = statistics.median(r.seconds for r in tool_runs)
            rss = max(r.peak_rss_mb for r in tool_runs)
            rates[(label, tool)] = total / seconds / 1e6
            print(
                f"  {label:>20} {tool:>18}: {rates[(label, tool)]:7.1f} MB/s  "
                f"median {seconds:6.2f} s  max peak RSS {rss:6.1f} MB"
            )
    labels = list(results)
    up, capped = labels[0], labels[1]
    mc, sd, dd = rates[(up, "modelcache")], rates[(up, "snapshot_download")], rates[(up, "dd")]
    print("\nratios (targets: uncapped >= 0.9x dd and >= 2.5x snapshot_download; capped >= 2.5x)")
    print(f"  uncapped modelcache / dd conv=fsync     = {mc / dd:.2f}")
    print(f"  uncapped modelcache / snapshot_download = {mc / sd:.2f}")
    print(
        f"  capped   modelcache / snapshot_download = "
        f"{rates[(capped, 'modelcache')] / rates[(capped, 'snapshot_download')]:.2f}"
    )


if __name__ == "__main__":
    sys.exit(main())
