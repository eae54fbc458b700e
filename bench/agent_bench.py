"""Agent benchmark: the node agent's memory and CPU when idle and while it pulls a multi-GB model.

    .venv/bin/python -m bench.agent_bench [--size 4Gi] [--shards 4] [--idle-seconds 20]
        [--repeat 1] [--deletion-grace 2] [--workdir DIR] [--keep]

Builds a synthetic repo (--shards safetensors files adding up to about --size, plus small json
files) and serves it from the local Hub-compatible origin, once for all runs. Each run then starts
real processes, as a node would have them: `modelcache-coordinator` on the embedded store and one
`modelcache-agent` (node bench-0 in group a100, an empty cache root, HF_ENDPOINT = the origin), and
measures the agent (its RSS includes any children; CPU is % of one core, 100 = one core busy):

1. idle: once GET /readyz says registered, RSS every 0.1 s for --idle-seconds;
2. pull: PUT a LocalModelNodeGroup a100 and a LocalModelCache of the repo (modelSize = the repo's
   bytes), RSS every 0.1 s until the agent's GET /v1/status says ModelDownloaded; throughput is
   the repo's bytes over PUT -> ModelDownloaded (polled every 0.2 s);
3. idle again for --idle-seconds with the model on disk (a leak shows here);
4. DELETE the cache: how long until the model's files are gone from the cache root (the agent
   waits --deletion-grace first) and the coordinator has dropped the object; then SIGTERM.

Peaks are the larger of the sampled maximum and the kernel's high-water mark (VmHWM), which is
reset before each phase (/proc/PID/clear_refs) so a spike between two samples is not missed.
Memory is in MiB (what the README's "MB" of RSS means), throughput in MB/s (10^6 bytes).
Figures are medians over --repeat runs; a missed target prints MISSED and still exits 0.
Processes are always stopped (SIGTERM, then SIGKILL after 30 s), also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench import harness
from bench.harness import AGENT, COORDINATOR, PY, MiB
from bench.measured_revision import measured_revision
from modelcache.contract.quantities import format_bytes, parse_bytes
from modelcache.contract.storage_keys import storage_key

REPO_ID = "bench/agent-model"
SOURCE_URI = f"hf://{REPO_ID}"
CACHE_NAME = "bench-agent-model"
GROUP = "a100"
NODE = "bench-0"
SAMPLE_EVERY = 0.1
STATUS_EVERY = 0.2
IDLE_TARGET_MIB = 80.0
PULL_TARGET_MIB = 200.0
Figures = dict[str, float]


class AgentFailed(SystemExit):
    """The agent crashed, errored, or did not do its job in time: no figures to give."""


@dataclass
class Phase:
    """RSS samples and CPU of one process tree over one phase of a run."""

    ps: psutil.Process
    rss_mib: list[float] = field(default_factory=list)
    threads: int = 0
    hwm_reset: bool = False
    started: float = field(default_factory=time.monotonic)
    cpu_started: float = 0.0

    def __post_init__(self) -> None:
        self.hwm_reset = _reset_hwm(self.ps.pid)
        self.cpu_started = _cpu_seconds(self.ps)
        self.started = time.monotonic()

    def sample(self) -> None:
        rss = self.ps.memory_info().rss
        for child in _children(self.ps):
            with contextlib.suppress(psutil.Error):
                rss += child.memory_info().rss
        self.rss_mib.append(rss / MiB)
        self.threads = max(self.threads, self.ps.num_threads())

    def figures(self, prefix: str) -> Figures:
        wall = time.monotonic() - self.started
        sampled_peak = max(self.rss_mib, default=math.nan)
        hwm = _hwm_mib(self.ps.pid) if self.hwm_reset else math.nan
        return {
            f"{prefix}_rss_median_mib": statistics.median(self.rss_mib),
            f"{prefix}_rss_peak_mib": max(sampled_peak, hwm) if self.hwm_reset else sampled_peak,
            f"{prefix}_rss_sampled_peak_mib": sampled_peak,
            f"{prefix}_cpu_pct": 100 * (_cpu_seconds(self.ps) - self.cpu_started) / wall,
            f"{prefix}_threads": self.threads,
            f"{prefix}_samples": len(self.rss_mib),
        }


@dataclass(frozen=True)
class Services:
    origin: str
    origin_ps: psutil.Process
    coordinator: str
    agent: str
    agent_proc: subprocess.Popen[bytes]
    agent_log: Path


def main() -> int:
    args = _parse()
    signal.signal(signal.SIGTERM, harness.exit_on_sigterm)
    created = args.workdir is None
    workdir: Path = (
        Path(tempfile.mkdtemp(prefix="modelcache-agent-bench-")) if created else args.workdir
    )
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        files = harness.repo_files(args.size, args.shards)
        total = sum(files.values())
        _check_disk(workdir, files, total)
        print(f"agent at {measured_revision()}")
        print(
            f"agent bench: repo {len(files)} files, {format_bytes(total)} ({total:,} bytes), "
            f"{args.idle_seconds:g} s idle phases, {args.repeat} run(s), workdir {workdir}, "
            f"{psutil.cpu_count()} cores",
            flush=True,
        )
        repo_dir = harness.ensure_repo(workdir, files)
        runs: list[Figures] = []
        with _origin(workdir, repo_dir) as (origin, origin_ps):
            for number in range(1, args.repeat + 1):
                figures = _run(args, workdir, number, origin, origin_ps, total)
                _print_run(number, figures)
                runs.append(figures)
        _report(args, runs, total)
    finally:
        if args.keep:
            print(f"\nkept {workdir}")
        elif created:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            for made in (workdir / "repo", workdir / "repo.complete", *workdir.glob("run-*")):
                if made.is_dir():
                    shutil.rmtree(made, ignore_errors=True)
                else:
                    made.unlink(missing_ok=True)
            (workdir / "origin.url").unlink(missing_ok=True)
            (workdir / "origin.log").unlink(missing_ok=True)
    return 0


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--size", type=parse_bytes, default=parse_bytes("4Gi"), help="repo bytes")
    p.add_argument("--shards", type=int, default=4, help="safetensors files (default 4)")
    p.add_argument("--idle-seconds", type=float, default=20.0, help="each idle phase (default 20)")
    p.add_argument("--repeat", type=int, default=1, help="runs; figures are medians (default 1)")
    p.add_argument(
        "--deletion-grace",
        type=float,
        default=2.0,
        help="the agent's --deletion-grace, seconds (its default is 30; default here 2)",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        help="where the repo, cache roots, databases and logs go (default: a new directory "
        "under the system temp dir, removed at the end unless --keep)",
    )
    p.add_argument(
        "--keep",
        action="store_true",
        help="leave the workdir in place; a later run with the same --workdir reuses the repo",
    )
    args = p.parse_args()
    if args.shards < 1 or args.repeat < 1 or args.idle_seconds <= 0:
        p.error("--shards and --repeat must be at least 1, --idle-seconds positive")
    if args.size < args.shards * MiB:
        p.error("--size must give every shard at least 1 MiB")
    return args


def _check_disk(workdir: Path, files: dict[str, int], total: int) -> None:
    """The repo (unless already there) plus one cached copy plus 1 GiB must fit."""
    needed = total + 2**30 + (0 if harness.repo_ready(workdir, files) else total)
    free = shutil.disk_usage(workdir).free
    print(f"disk: {format_bytes(free)} free under {workdir}, {format_bytes(needed)} needed")
    if free < needed:
        raise SystemExit(
            f"not enough disk under {workdir}: {format_bytes(free)} free, the bench needs "
            f"{format_bytes(needed)}: free space, pass a smaller --size, or another --workdir"
        )


@contextlib.contextmanager
def _origin(workdir: Path, repo_dir: Path) -> Iterator[tuple[str, psutil.Process]]:
    ready = workdir / "origin.url"
    ready.unlink(missing_ok=True)
    cmd = [PY, "-m", "modelcache.origin", "--repo", f"{REPO_ID}={repo_dir}"]
    cmd += ["--ready-file", str(ready)]
    log = workdir / "origin.log"
    started = time.monotonic()
    with harness.process(cmd, log) as proc:
        # The origin hashes every LFS file before it serves: seconds per GiB.
        harness.wait_until("the origin to serve", ready.exists, proc, log, limit=900)
        print(f"origin ready in {time.monotonic() - started:.1f} s", flush=True)
        yield ready.read_text().strip(), psutil.Process(proc.pid)


def _run(
    args: argparse.Namespace,
    workdir: Path,
    number: int,
    origin: str,
    origin_ps: psutil.Process,
    total: int,
) -> Figures:
    run_dir = workdir / f"run-{number}"
    shutil.rmtree(run_dir, ignore_errors=True)
    cache_root = run_dir / "cache"
    cache_root.mkdir(parents=True)
    harness.settle_disk()
    figures: Figures = {}
    coordinator_port, agent_port = harness.free_port(), harness.free_port()
    coordinator = f"http://127.0.0.1:{coordinator_port}"
    coordinator_cmd = [COORDINATOR, f"--store=sqlite:{run_dir / 'coordinator.db'}"]
    coordinator_cmd.append(f"--listen=127.0.0.1:{coordinator_port}")
    agent_cmd = [AGENT, f"--coordinator={coordinator}", f"--node-name={NODE}"]
    agent_cmd += [f"--node-group={GROUP}", f"--cache-root={cache_root}"]
    agent_cmd += [f"--listen=127.0.0.1:{agent_port}", "--min-free=0"]
    agent_cmd.append(f"--deletion-grace={args.deletion_grace}")
    agent_env = {**os.environ, "HF_ENDPOINT": origin, "HF_HUB_DISABLE_XET": "1"}
    coordinator_log, agent_log = run_dir / "coordinator.log", run_dir / "agent.log"
    with harness.process(coordinator_cmd, coordinator_log) as coordinator_proc:
        harness.wait_until(
            "the coordinator to be ready",
            lambda: harness.get(f"{coordinator}/readyz")[0] == 200,
            coordinator_proc,
            coordinator_log,
            limit=60,
        )
        started = time.monotonic()
        with harness.process(agent_cmd, agent_log, env=agent_env) as agent_proc:
            agent = f"http://127.0.0.1:{agent_port}"
            services = Services(origin, origin_ps, coordinator, agent, agent_proc, agent_log)
            harness.wait_until(
                "the agent to register",
                lambda: harness.registered(agent),
                agent_proc,
                agent_log,
                limit=60,
            )
            figures["registered_s"] = time.monotonic() - started
            figures.update(_idle(services, args.idle_seconds, "idle"))
            figures.update(_pull(services, total))
            figures.update(_idle(services, args.idle_seconds, "after"))
            figures.update(_delete(services, cache_root, args.deletion_grace))
            figures["shutdown_s"], code = harness.stop(agent_proc)
            figures["exit_code"] = float(code)
    return figures


def _idle(services: Services, seconds: float, prefix: str) -> Figures:
    phase = Phase(psutil.Process(services.agent_proc.pid))
    _sample_until(services, phase, lambda: False, seconds)
    return phase.figures(prefix)


def _pull(services: Services, total: int) -> Figures:
    """Apply the group and the cache; sample until the agent reports the model downloaded."""
    harness.put_node_group(services.coordinator, GROUP, "100Ti")
    phase = Phase(psutil.Process(services.agent_proc.pid))
    origin_cpu = _cpu_seconds(services.origin_ps)
    key = storage_key(SOURCE_URI)
    harness.put_cache(services.coordinator, CACHE_NAME, SOURCE_URI, total, GROUP)
    put_at = time.monotonic()
    last_poll = -math.inf
    report: dict[str, Any] = {}

    def downloaded() -> bool:
        nonlocal last_poll, report
        if time.monotonic() - last_poll < STATUS_EVERY:
            return False
        last_poll = time.monotonic()
        code, body = harness.get(f"{services.agent}/v1/status")
        models = body.get("models", []) if code == 200 and isinstance(body, dict) else []
        report = next((m for m in models if m.get("storageKey") == key), {})
        if report.get("state") == "ModelDownloadError":
            raise AgentFailed(
                f"the agent failed the pull: {report.get('reason')}: {report.get('message')}"
            )
        return report.get("state") == "ModelDownloaded"

    limit = max(600.0, total / 20e6)  # slower than 20 MB/s is a failure, not a figure
    _sample_until(services, phase, downloaded, limit, what="the model to be downloaded")
    seconds = time.monotonic() - put_at
    figures = phase.figures("pull")
    figures["pull_s"] = seconds
    figures["pull_mb_s"] = total / seconds / 1e6
    figures["origin_cpu_pct"] = (
        100 * (_cpu_seconds(services.origin_ps) - origin_cpu) / (time.monotonic() - phase.started)
    )
    figures["reported_bytes"] = float(report.get("bytesDone", math.nan))
    return figures


def _delete(services: Services, cache_root: Path, grace: float) -> Figures:
    """DELETE the cache; time until no file of the model is left and the object is gone."""
    key = storage_key(SOURCE_URI)
    models = cache_root / "models"
    on_disk = sum(p.stat().st_size for p in (models / key).rglob("*") if p.is_file())
    url = f"{services.coordinator}/v1/localmodelcaches/{CACHE_NAME}"
    code, body = harness.request("DELETE", url)
    if code not in (200, 202):
        raise AgentFailed(f"DELETE {url}: {code} {body}")
    started = time.monotonic()
    files_gone = object_gone = math.nan
    deadline = started + grace + 120
    while time.monotonic() < deadline and (math.isnan(files_gone) or math.isnan(object_gone)):
        if services.agent_proc.poll() is not None:
            raise AgentFailed(_crashed(services))
        now = time.monotonic() - started
        if math.isnan(files_gone) and not [p for p in models.iterdir() if key in p.name]:
            files_gone = now
        if math.isnan(object_gone) and harness.get(url)[0] == 404:
            object_gone = now
        time.sleep(STATUS_EVERY)
    left = sorted(p.name for p in models.iterdir() if key in p.name)
    return {
        "on_disk_bytes": float(on_disk),
        "delete_files_s": files_gone,
        "delete_object_s": object_gone,
        "delete_left": float(len(left)),
    }


def _sample_until(
    services: Services,
    phase: Phase,
    done: Callable[[], bool],
    limit: float,
    *,
    what: str = "",
) -> None:
    """Sample every SAMPLE_EVERY seconds until `done()` or, without `what`, for `limit` s."""
    started = time.monotonic()
    tick = 0
    while True:
        if services.agent_proc.poll() is not None:
            raise AgentFailed(_crashed(services))
        phase.sample()
        if done():
            return
        tick += 1
        next_at = started + tick * SAMPLE_EVERY
        if next_at - started > limit:
            if what:
                raise AgentFailed(f"gave up waiting {limit:.0f} s for {what}")
            return
        time.sleep(max(next_at - time.monotonic(), 0))


def _crashed(services: Services) -> str:
    tail = services.agent_log.read_text(errors="replace")[-3000:]
    return f"the agent exited with code {services.agent_proc.returncode}:\n{tail}"


def _children(ps: psutil.Process) -> list[psutil.Process]:
    try:
        return ps.children(recursive=True)
    except psutil.Error:
        return []


def _cpu_seconds(ps: psutil.Process) -> float:
    """User + system seconds of the process and its living children."""
    total = 0.0
    for p in (ps, *_children(ps)):
        with contextlib.suppress(psutil.Error):
            times = p.cpu_times()
            total += times.user + times.system
    return total


def _reset_hwm(pid: int) -> bool:
    """Reset the kernel's peak RSS of `pid` (Linux >= 4.0, own processes)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _hwm_mib(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return math.nan


def _print_run(number: int, f: Figures) -> None:
    print(
        f"  run {number}: idle RSS {f['idle_rss_median_mib']:.1f} MiB "
        f"(peak {f['idle_rss_peak_mib']:.1f}), CPU {f['idle_cpu_pct']:.2f} %; "
        f"pull {f['pull_mb_s']:.0f} MB/s in {f['pull_s']:.1f} s, RSS peak "
        f"{f['pull_rss_peak_mib']:.1f} MiB (median {f['pull_rss_median_mib']:.1f}), "
        f"CPU {f['pull_cpu_pct']:.0f} %; after: RSS {f['after_rss_median_mib']:.1f} MiB, "
        f"CPU {f['after_cpu_pct']:.2f} %; files gone {f['delete_files_s']:.1f} s after DELETE; "
        f"SIGTERM -> exit {f['shutdown_s']:.2f} s (code {f['exit_code']:.0f})",
        flush=True,
    )


def _report(args: argparse.Namespace, runs: list[Figures], total: int) -> None:
    def cell(key: str, digits: int = 1, unit: str = "") -> str:
        values = [r[key] for r in runs]
        text = f"{statistics.median(values):,.{digits}f}{unit}"
        if len(runs) > 1:
            text += f" ({min(values):,.{digits}f}-{max(values):,.{digits}f})"
        return text

    def verdict(key: str, ceiling: float) -> str:
        return "ok" if statistics.median(r[key] for r in runs) <= ceiling else "MISSED"

    grace = args.deletion_grace
    rows = [
        ("agent idle RSS, median of samples", cell("idle_rss_median_mib", unit=" MiB"), "", ""),
        (
            "agent idle RSS, peak (VmHWM)",
            cell("idle_rss_peak_mib", unit=" MiB"),
            f"<= {IDLE_TARGET_MIB:.0f} MB",
            verdict("idle_rss_peak_mib", IDLE_TARGET_MIB),
        ),
        ("agent idle CPU (% of one core)", cell("idle_cpu_pct", 2, " %"), "", ""),
        (
            "agent RSS during the pull, peak (VmHWM)",
            cell("pull_rss_peak_mib", unit=" MiB"),
            f"<= {PULL_TARGET_MIB:.0f} MB",
            verdict("pull_rss_peak_mib", PULL_TARGET_MIB),
        ),
        (
            "agent RSS during the pull, median of samples",
            cell("pull_rss_median_mib", unit=" MiB"),
            "",
            "",
        ),
        ("pull throughput, PUT -> ModelDownloaded", cell("pull_mb_s", 0, " MB/s"), "", ""),
        ("pull time", cell("pull_s", 1, " s"), "", ""),
        ("agent CPU during the pull (% of one core)", cell("pull_cpu_pct", 0, " %"), "", ""),
        ("origin CPU during the pull (% of one core)", cell("origin_cpu_pct", 0, " %"), "", ""),
        ("agent threads during the pull, peak", cell("pull_threads", 0), "", ""),
        (
            "agent idle RSS after the pull, median of samples",
            cell("after_rss_median_mib", unit=" MiB"),
            "",
            "",
        ),
        (
            "agent idle RSS after the pull, peak (VmHWM)",
            cell("after_rss_peak_mib", unit=" MiB"),
            f"<= {IDLE_TARGET_MIB:.0f} MB",
            verdict("after_rss_peak_mib", IDLE_TARGET_MIB),
        ),
        ("agent idle CPU after the pull (% of one core)", cell("after_cpu_pct", 2, " %"), "", ""),
        (
            f"DELETE -> model files gone (agent grace {grace:g} s)",
            cell("delete_files_s", 1, " s"),
            "",
            "ok" if all(r["delete_left"] == 0 for r in runs) else "MISSED (files left)",
        ),
        ("DELETE -> LocalModelCache gone (404)", cell("delete_object_s", 1, " s"), "", ""),
        ("agent start -> registered", cell("registered_s", 2, " s"), "", ""),
        ("agent SIGTERM -> exit", cell("shutdown_s", 2, " s"), "", ""),
    ]
    on_disk = {r["on_disk_bytes"] for r in runs} | {r["reported_bytes"] for r in runs}
    exit_codes = {r["exit_code"] for r in runs}
    print(f"\ncommand: .venv/bin/python -m bench.agent_bench {' '.join(sys.argv[1:])}")
    print(f"agent at {measured_revision()}")
    print(
        f"repo {format_bytes(total)} in {args.shards} shards; medians over {len(runs)} run(s)"
        + (" (min-max)" if len(runs) > 1 else "")
        + f"; RSS in MiB, sampled every {SAMPLE_EVERY:g} s; targets read as MiB\n"
    )
    print("| figure | value | target | |")
    print("|---|---|---|---|")
    for label, value, target, ok in rows:
        print(f"| {label} | {value} | {target} | {ok} |")
    print(
        f"\nbytes on disk and reported by the agent after each pull: "
        f"{sorted(-1 if math.isnan(b) else int(b) for b in on_disk)} "
        f"(repo {total}); agent exit codes: {sorted(int(c) for c in exit_codes)}"
    )


if __name__ == "__main__":
    sys.exit(main())
