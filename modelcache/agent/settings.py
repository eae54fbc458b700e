"""Agent settings: frozen, built once by `main` from flags and MODELCACHE_* variables."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from modelcache.contract.errors import UsageError
from modelcache.contract.objects import DEFAULT_NODE_GROUP_LABEL, check_group_name
from modelcache.contract.quantities import parse_bytes, parse_rate
from modelcache.contract.service_process import parse_listen
from modelcache.pulling import PullSettings, SourceCredentials

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_TOKEN_FILE = Path("/var/run/secrets/tokens/modelcache-token")
"""Where the DaemonSet projects the agent's service account token (audience `modelcache`)."""
_PULL_DEFAULTS = PullSettings()


@dataclass(frozen=True, slots=True)
class KubeAccess:
    """How to read this agent's own Node (only `get` on it is needed)."""

    api_url: str
    token_file: Path | None = None
    ca_file: Path | None = None


@dataclass(frozen=True, slots=True)
class AgentSettings:
    coordinator: str
    node_name: str
    cache_root: Path
    node_group: str | None = None
    """Given: used as is (standalone). None: read from the Node's label (in Kubernetes)."""
    node_group_label: str = DEFAULT_NODE_GROUP_LABEL
    kube: KubeAccess | None = None
    token_file: Path | None = None
    """The node's token for the coordinator, re-read as it rotates; None sends none."""
    host: str = "0.0.0.0"
    port: int = 9090
    advertise_url: str | None = None
    """The base URL peers reach this agent at; None derives it from the listen address."""
    peer_upload_bandwidth: int | None = None
    """Bytes per second over every upload to peers together; None for no cap."""
    peer_upload_slots: int = 8
    """Uploads to peers at once; a peer asking beyond that is sent elsewhere (503)."""
    max_parallel_pulls: int = 2
    """Models pulled at once; the others wait as ModelDownloadPending."""
    max_bandwidth: int | None = None
    """Bytes per second over every pull of the node together; None for no cap."""
    deletion_grace: float = 30.0
    """Seconds a model stays after leaving the desired list (a quick re-add keeps its files)."""
    error_retry_interval: float = 600.0
    """A model in ModelDownloadError is tried again after this many seconds (or on a new spec)."""
    retry_base_delay: float = 2.0
    """First wait after a temporary failure of a whole pull; doubles up to `retry_max_delay`."""
    retry_max_delay: float = 300.0
    progress_interval: float = 0.5
    """At most one progress-only report per this many seconds (state changes go at once)."""
    heartbeat_interval: float | None = None
    """Report at least this often; None takes the coordinator's answer at registration."""
    long_poll_seconds: float = 30.0
    rescan_interval: float = 60.0
    """How often published models are checked against their manifests (sizes, edited files)."""
    verify_on_start: bool = False
    """Re-hash every published model at start (reads every byte) instead of checking sizes."""
    request_timeout: float = 10.0
    pull: PullSettings = field(default_factory=PullSettings)
    credentials: SourceCredentials = field(default_factory=SourceCredentials)

    def __post_init__(self) -> None:
        if self.max_parallel_pulls < 1:
            raise UsageError("--max-parallel-pulls must be at least 1")
        if self.max_bandwidth is not None and self.max_bandwidth < 64 * 1024:
            raise UsageError("--max-bandwidth must be at least 64Ki bytes per second")
        if self.peer_upload_bandwidth is not None and self.peer_upload_bandwidth < 64 * 1024:
            raise UsageError("--peer-upload-bandwidth must be at least 64Ki bytes per second")
        if self.peer_upload_slots < 1:
            raise UsageError("--peer-upload-slots must be at least 1")
        url = self.advertise_url
        if url is not None and (
            not url.startswith(("http://", "https://")) or not url.split("://", 1)[1].strip("/")
        ):
            raise UsageError(
                f"--advertise-url {url!r} must be the http(s) base URL peers reach this agent "
                "at, e.g. http://10.0.3.7:9090"
            )

    @property
    def advertised_url(self) -> str:
        """What the agent registers as its address: the URL its peers fetch chunks from."""
        if self.advertise_url:
            return self.advertise_url.rstrip("/")
        host = self.host if self.host not in ("0.0.0.0", "", "::") else self.node_name
        host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        return f"http://{host}:{self.port}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelcache-agent",
        description="Keeps this node's model cache as the coordinator says. Every flag can also "
        "be set as MODELCACHE_<FLAG> (e.g. MODELCACHE_CACHE_ROOT); NODE_NAME is read too.",
    )
    parser.add_argument("--coordinator", help="coordinator base URL, e.g. http://coordinator:8080")
    parser.add_argument("--node-name", help="this node's name (default: $NODE_NAME)")
    parser.add_argument(
        "--node-group", help="this node's group; without it, read from the Node's label"
    )
    parser.add_argument(
        "--node-group-label", help=f"node label with the group (default {DEFAULT_NODE_GROUP_LABEL})"
    )
    parser.add_argument("--kube-api", help="API server URL (default: in-cluster)")
    parser.add_argument(
        "--token-file",
        help=f"the node's token for the coordinator, sent as a bearer token and re-read when "
        f"it changes (default {DEFAULT_TOKEN_FILE} when it exists, else none)",
    )
    parser.add_argument("--cache-root", help="where models live: <cache-root>/models/<key>/")
    parser.add_argument("--listen", help="HOST:PORT for /metrics, /healthz (default 0.0.0.0:9090)")
    parser.add_argument(
        "--advertise-url",
        help="base URL peers of the node group reach this agent at, e.g. http://$(POD_IP):9090 "
        "(default http://<listen host, or the node name for 0.0.0.0>:<port>)",
    )
    parser.add_argument(
        "--peer-upload-bandwidth",
        help="cap over every upload to peers together, bytes/s, e.g. 200Mi (default none)",
    )
    parser.add_argument(
        "--peer-upload-slots", type=int, help="uploads to peers at once; more get 503 (default 8)"
    )
    parser.add_argument("--max-parallel-pulls", type=int, help="models pulled at once (default 2)")
    parser.add_argument("--max-bandwidth", help="node-wide cap, bytes/s, e.g. 500Mi (default none)")
    parser.add_argument("--concurrency", type=int, help="ranged requests per pull (default 16)")
    parser.add_argument("--chunk-size", help="bytes per ranged request (default 4Mi)")
    parser.add_argument("--min-free", help="space to keep free on the cache disk (default 1Gi)")
    parser.add_argument("--deletion-grace", type=float, help="seconds (default 30)")
    parser.add_argument("--error-retry-interval", type=float, help="seconds (default 600)")
    parser.add_argument("--heartbeat-interval", type=float, help="seconds (default: coordinator's)")
    parser.add_argument("--rescan-interval", type=float, help="seconds (default 60)")
    parser.add_argument(
        "--verify-on-start", action="store_true", help="re-hash every published model at start"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def settings_from(
    args: Sequence[str], environ: Mapping[str, str] | None = None
) -> tuple[AgentSettings, bool]:
    """Flags win over MODELCACHE_* variables, which win over defaults."""
    env = os.environ if environ is None else environ
    parsed = build_parser().parse_args(args)

    def pick(flag: str) -> str | None:
        value = getattr(parsed, flag)
        if value is not None and value is not False:
            return str(value)
        return env.get(f"MODELCACHE_{flag.upper()}") or None

    def number(flag: str, default: float) -> float:
        value = pick(flag)
        try:
            result = float(value) if value is not None else default
        except ValueError as e:
            raise UsageError(f"--{flag.replace('_', '-')} {value!r} is not a number") from e
        if result < 0:
            raise UsageError(f"--{flag.replace('_', '-')} must not be negative")
        return result

    def size(flag: str) -> int | None:
        value = pick(flag)
        what = f"--{flag.replace('_', '-')}"
        return parse_bytes(value, what=what) if value is not None else None

    coordinator = pick("coordinator")
    if not coordinator:
        raise UsageError("--coordinator is required (or MODELCACHE_COORDINATOR)")
    node_name = pick("node_name") or env.get("NODE_NAME")
    if not node_name:
        raise UsageError("--node-name is required (or NODE_NAME from the downward API)")
    cache_root = pick("cache_root")
    if not cache_root:
        raise UsageError("--cache-root is required (or MODELCACHE_CACHE_ROOT)")
    group = pick("node_group")
    if group is not None:
        try:
            check_group_name(group, "--node-group")
        except ValueError as e:
            raise UsageError(str(e)) from e
    host, port = parse_listen(pick("listen") or "0.0.0.0:9090")
    min_free = size("min_free")
    pull = PullSettings(
        concurrency=int(number("concurrency", 16)),
        chunk_size=size("chunk_size") or _PULL_DEFAULTS.chunk_size,
        min_free_bytes=_PULL_DEFAULTS.min_free_bytes if min_free is None else min_free,
    )
    token_file = pick("token_file")
    heartbeat = pick("heartbeat_interval")
    rate = pick("max_bandwidth")
    bandwidth = parse_rate(rate, what="--max-bandwidth") if rate else None
    upload_rate = pick("peer_upload_bandwidth")
    upload = parse_rate(upload_rate, what="--peer-upload-bandwidth") if upload_rate else None
    settings = AgentSettings(
        coordinator=coordinator.rstrip("/"),
        node_name=node_name,
        cache_root=Path(cache_root),
        node_group=group,
        node_group_label=pick("node_group_label") or DEFAULT_NODE_GROUP_LABEL,
        kube=None if group else _kube_access(pick("kube_api"), env),
        token_file=Path(token_file) if token_file else _default_token_file(),
        host=host,
        port=port,
        advertise_url=pick("advertise_url"),
        peer_upload_bandwidth=upload,
        peer_upload_slots=int(number("peer_upload_slots", 8)),
        max_parallel_pulls=int(number("max_parallel_pulls", 2)),
        max_bandwidth=bandwidth,
        deletion_grace=number("deletion_grace", 30.0),
        error_retry_interval=number("error_retry_interval", 600.0),
        heartbeat_interval=number("heartbeat_interval", 0) if heartbeat else None,
        rescan_interval=number("rescan_interval", 60.0) or 60.0,
        verify_on_start=pick("verify_on_start") in ("True", "true", "1", "yes"),
        pull=pull,
        credentials=SourceCredentials.from_environ(env),
    )
    return settings, bool(parsed.verbose)


def _default_token_file() -> Path | None:
    return DEFAULT_TOKEN_FILE if DEFAULT_TOKEN_FILE.exists() else None


def _kube_access(api_url: str | None, env: Mapping[str, str]) -> KubeAccess | None:
    """In a pod: the service account's token and CA; elsewhere only an explicit --kube-api."""
    if api_url:
        token = SERVICE_ACCOUNT_DIR / "token"
        return KubeAccess(api_url.rstrip("/"), token if token.exists() else None, None)
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        return None
    host = f"[{host}]" if ":" in host else host
    return KubeAccess(
        f"https://{host}:{port}",
        SERVICE_ACCOUNT_DIR / "token",
        SERVICE_ACCOUNT_DIR / "ca.crt",
    )
