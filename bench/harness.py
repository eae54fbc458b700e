"""What the benchmarks that run real processes share: starting and stopping them, waiting for
them, talking to them over local HTTP, and the synthetic repo they pull."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from modelcache.contract.objects import CACHE_KIND
from modelcache.origin.synthetic import write_synthetic_repo

PY = sys.executable
REPO = Path(__file__).resolve().parents[1]
AGENT = str(Path(PY).with_name("modelcache-agent"))
COORDINATOR = str(Path(PY).with_name("modelcache-coordinator"))
API = "serving.kserve.io/v1alpha1"
MiB = 2**20
STOP_GRACE = 30.0
# Small files of a real checkpoint beside the shards; their bytes count in the repo's size.
SIDE_FILES = {"config.json": 1_500, "tokenizer.json": 900_000, "generation_config.json": 200}
# Local services only: never send these requests through a proxy from the environment.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through every `finally`: the services get stopped


def repo_files(size: int, shards: int) -> dict[str, int]:
    bulk = max(size - sum(SIDE_FILES.values()), shards * MiB)
    files = {
        f"model-{i + 1:05d}-of-{shards:05d}.safetensors": bulk // shards + (i < bulk % shards)
        for i in range(shards)
    }
    files.update(SIDE_FILES)
    return files


def repo_ready(workdir: Path, files: dict[str, int]) -> bool:
    marker = workdir / "repo.complete"
    return marker.exists() and marker.read_text() == repr(sorted(files.items()))


def ensure_repo(workdir: Path, files: dict[str, int]) -> Path:
    """Write the synthetic repo unless an identical one is there; the marker sits outside it,
    since the origin serves every file in the folder."""
    repo_dir = workdir / "repo"
    if repo_ready(workdir, files):
        print("reusing the synthetic repo", flush=True)
        return repo_dir
    shutil.rmtree(repo_dir, ignore_errors=True)
    started = time.monotonic()
    write_synthetic_repo(repo_dir, files, seed=1)
    (workdir / "repo.complete").write_text(repr(sorted(files.items())))
    print(f"wrote the synthetic repo in {time.monotonic() - started:.1f} s", flush=True)
    return repo_dir


def registered(agent: str) -> bool:
    code, body = get(f"{agent}/readyz")
    return code == 200 and isinstance(body, dict) and body.get("registered") is True


@contextlib.contextmanager
def process(
    cmd: list[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> tuple[float, int]:
    """SIGTERM, SIGKILL after STOP_GRACE; the seconds it took and the exit code."""
    started = time.monotonic()
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return time.monotonic() - started, proc.returncode


def wait_until(
    what: str, ready: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path, limit: float
) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:]
            raise SystemExit(f"gave up waiting for {what}: exit code {proc.returncode}:\n{tail}")
        if ready():
            return
        time.sleep(0.1)
    raise SystemExit(f"gave up waiting {limit:.0f} s for {what}; see {log}")


def request(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    """(status, parsed JSON body or None); 0 when nothing answered."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with HTTP.open(request, timeout=10) as response:
            status, text = response.status, response.read()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read()
    except (urllib.error.URLError, OSError):
        return 0, None
    try:
        return status, json.loads(text) if text else None
    except ValueError:
        return status, None


def get(url: str) -> tuple[int, Any]:
    return request("GET", url)


def put(url: str, body: dict[str, Any]) -> None:
    code, answer = request("PUT", url, body)
    if code not in (200, 201):
        raise SystemExit(f"PUT {url}: {code} {answer}")


def put_node_group(coordinator: str, name: str, storage_limit: str) -> None:
    put(
        f"{coordinator}/v1/localmodelnodegroups/{name}",
        {
            "apiVersion": API,
            "kind": "LocalModelNodeGroup",
            "metadata": {"name": name},
            "spec": {"storageLimit": storage_limit},
        },
    )


def put_cache(
    coordinator: str,
    name: str,
    source_uri: str,
    size: int,
    group: str,
    annotations: dict[str, str] | None = None,
) -> None:
    metadata: dict[str, Any] = {"name": name}
    if annotations is not None:
        metadata["annotations"] = annotations
    put(
        f"{coordinator}/v1/localmodelcaches/{name}",
        {
            "apiVersion": API,
            "kind": CACHE_KIND,
            "metadata": metadata,
            "spec": {"sourceModelUri": source_uri, "modelSize": str(size), "nodeGroups": [group]},
        },
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def settle_disk() -> None:
    """Flush dirty pages and wait for writeback, so the last run's writes do not tax this one."""
    subprocess.run(["sync"], check=True)
    for _ in range(50):
        if meminfo("Dirty") + meminfo("Writeback") < 16 * 1024:  # KiB
            break
        time.sleep(0.2)


def meminfo(name: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0
