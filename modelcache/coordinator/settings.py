"""Coordinator settings: frozen, built once by `main` from flags and MODELCACHE_* variables."""

from __future__ import annotations

import argparse
import math
import os
import secrets
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from modelcache.contract.errors import UsageError
from modelcache.contract.objects import DEFAULT_NODE_GROUP_LABEL
from modelcache.contract.service_process import parse_listen
from modelcache.coordinator.webhook_settings import (
    WebhookSettings,
    add_webhook_arguments,
    webhook_settings_from,
)


@dataclass(frozen=True, slots=True)
class StoreSettings:
    kind: str  # "sqlite" or "kube"
    sqlite_path: Path | None = None
    kubeconfig: Path | None = None
    namespace: str = "modelcache-system"


AUTH_MODES = ("none", "tokens", "tokenreview")
DEFAULT_AGENT_SERVICE_ACCOUNT = "system:serviceaccount:modelcache-system:modelcache-agent"
DEFAULT_AGENT_AUDIENCE = "modelcache"


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """How agents prove which node they speak for (see `authenticating.py`)."""

    mode: str = "none"
    """none: open; tokens: per-node tokens from `tokens_file`; tokenreview: projected service
    account tokens checked with the API server's TokenReview."""
    tokens_file: Path | None = None
    gate_reads: bool = False
    """The desired-list long poll needs the node's token too (writes always do)."""
    service_account: str = DEFAULT_AGENT_SERVICE_ACCOUNT
    """tokenreview: the only user whose tokens may speak for a node."""
    audience: str = DEFAULT_AGENT_AUDIENCE
    """tokenreview: the audience the agents' projected tokens are issued for."""
    review_ttl: float = 60.0
    """tokenreview: seconds a token the API server accepted is trusted without asking again."""
    denied_ttl: float = 5.0
    """tokenreview: seconds a refused token is refused without asking again."""
    review_cache_size: int = 50_000


DEFAULT_LEASE_NAME = "modelcache-coordinator"


@dataclass(frozen=True, slots=True)
class ElectionSettings:
    """Leader election between coordinator replicas on one Lease (see `leading.py`); the
    timings mean what they mean in client-go's leaderelection."""

    identity: str
    """This replica's holderIdentity: the pod name (POD_NAME), else hostname_random."""
    lease_name: str = DEFAULT_LEASE_NAME
    """In `StoreSettings.namespace`."""
    lease_duration: float = 15.0
    """How long a standby waits, after it last saw the Lease change, before taking it over.
    Written to the Lease rounded up to whole seconds (`leaseDurationSeconds` is an integer)."""
    renew_deadline: float = 10.0
    """The leader steps down (stops writing, exits) when it could not renew for this long."""
    retry_period: float = 2.0
    """How often the leader renews and a standby tries to acquire."""

    @property
    def lease_seconds(self) -> int:
        return max(math.ceil(self.lease_duration), 1)


@dataclass(frozen=True, slots=True)
class CoordinatorSettings:
    store: StoreSettings
    auth: AuthSettings = AuthSettings()
    election: ElectionSettings | None = None
    """None: this coordinator acts alone (the embedded store, or `--no-leader-elect`)."""
    pod_name: str | None = None
    """This replica's pod (POD_NAME, from the downward API), which the kube store labels
    `modelcache.io/coordinator-role: leader` while it leads; None outside a pod: no label."""
    webhook: WebhookSettings | None = None
    """The admission webhooks' HTTPS listener; None: not served (`--webhook-listen`)."""
    host: str = "127.0.0.1"
    port: int = 8080
    node_group_label: str = DEFAULT_NODE_GROUP_LABEL
    heartbeat_interval: float = 10.0
    """How often agents are asked to report when nothing changes."""
    heartbeat_timeout: float = 30.0
    """A node whose agent has not reported for this long is NodeNotReady."""
    not_ready_deletion_timeout: float = 600.0
    """A deleted cache stops waiting for a node that has been NotReady this long."""
    status_interval: float = 1.0
    """At most one status write per changed object per this many seconds (coalescing)."""
    status_render_max_age: float = 0.5
    """REST may serve a cache status rendered this many seconds ago while reports stream in
    (it is re-rendered at once when nothing newer changed it)."""
    long_poll_max: float = 60.0
    """Longest wait a long poll of the desired list may ask for."""
    peer_key_file: Path | None = None
    """The key each node group's `peerToken` is derived from (`peer_tokens.py`); HA replicas
    share one so a failover keeps the tokens. None: a random key per process."""


def parse_store(text: str, kubeconfig: str | None) -> StoreSettings:
    if text == "kube":
        return StoreSettings("kube", kubeconfig=Path(kubeconfig) if kubeconfig else None)
    if text.startswith("sqlite:") and len(text) > len("sqlite:"):
        return StoreSettings("sqlite", sqlite_path=Path(text.removeprefix("sqlite:")))
    raise UsageError(f"--store {text!r}: use sqlite:PATH (embedded) or kube (Kubernetes API)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelcache-coordinator",
        description="Holds LocalModelCache objects, tells agents what to cache, reports status. "
        "Every flag can also be set as MODELCACHE_<FLAG> (e.g. MODELCACHE_STORE).",
    )
    parser.add_argument(
        "--store", help="sqlite:PATH (default sqlite:.modelcache/coordinator.db) or kube"
    )
    parser.add_argument("--listen", help="HOST:PORT for REST (default 127.0.0.1:8080)")
    parser.add_argument("--kubeconfig", help="kubeconfig for --store kube (default: in-cluster)")
    parser.add_argument(
        "--node-group-label", help=f"node label (default {DEFAULT_NODE_GROUP_LABEL})"
    )
    parser.add_argument("--heartbeat-timeout", type=float, help="seconds (default 30)")
    parser.add_argument("--not-ready-deletion-timeout", type=float, help="seconds (default 600)")
    parser.add_argument("--status-interval", type=float, help="seconds (default 1)")
    parser.add_argument(
        "--agent-auth",
        choices=AUTH_MODES,
        help="how agents prove their node: tokenreview (default with --store kube), tokens "
        "(default with --agent-tokens), none (default otherwise)",
    )
    parser.add_argument("--agent-tokens", help="YAML file of node: token lines (standalone auth)")
    parser.add_argument(
        "--auth-reads",
        action="store_true",
        default=None,
        help="the desired-list long poll needs the node's token too (default: open)",
    )
    parser.add_argument(
        "--agent-service-account",
        help=f"tokenreview: the agents' service account, NAMESPACE:NAME or the full user name "
        f"(default {DEFAULT_AGENT_SERVICE_ACCOUNT})",
    )
    parser.add_argument(
        "--agent-token-audience",
        help=f"tokenreview: audience of the agents' projected tokens (default "
        f"{DEFAULT_AGENT_AUDIENCE})",
    )
    parser.add_argument(
        "--leader-elect",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="replicas elect one leader on a Lease; the others stand by, not ready (default: on "
        "with --store kube; the embedded store runs alone)",
    )
    parser.add_argument(
        "--lease-name",
        help=f"the Lease, in namespace modelcache-system (default {DEFAULT_LEASE_NAME})",
    )
    parser.add_argument(
        "--lease-duration",
        type=float,
        help="seconds a standby waits for a silent leader (default 15)",
    )
    parser.add_argument(
        "--lease-renew-deadline",
        type=float,
        help="seconds the leader keeps acting without a renewal (default 2/3 of --lease-duration)",
    )
    parser.add_argument(
        "--lease-retry-period",
        type=float,
        help="seconds between renewals and acquire attempts (default 2/15 of --lease-duration)",
    )
    parser.add_argument(
        "--peer-key-file",
        help="file holding the key the node groups' peer tokens are derived from; HA replicas "
        "must share it (default: a random key per process)",
    )
    add_webhook_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def settings_from(
    args: Sequence[str], environ: Mapping[str, str] | None = None
) -> tuple[CoordinatorSettings, bool]:
    """Flags win over MODELCACHE_* variables, which win over defaults."""
    env = os.environ if environ is None else environ
    parsed = build_parser().parse_args(args)

    def pick(flag: str) -> str | None:
        value = getattr(parsed, flag)
        if value is not None:
            return str(value)
        return env.get(f"MODELCACHE_{flag.upper()}") or None

    def seconds(flag: str, default: float) -> float:
        value = pick(flag)
        try:
            number = float(value) if value is not None else default
        except ValueError as e:
            raise UsageError(f"--{flag.replace('_', '-')} {value!r} is not a number") from e
        if number <= 0:
            raise UsageError(f"--{flag.replace('_', '-')} must be positive")
        return number

    store = parse_store(pick("store") or "sqlite:.modelcache/coordinator.db", pick("kubeconfig"))
    host, port = parse_listen(pick("listen") or "127.0.0.1:8080")
    heartbeat_timeout = seconds("heartbeat_timeout", 30.0)
    settings = CoordinatorSettings(
        store=store,
        host=host,
        port=port,
        node_group_label=pick("node_group_label") or DEFAULT_NODE_GROUP_LABEL,
        heartbeat_interval=max(heartbeat_timeout / 3, 0.1),
        heartbeat_timeout=heartbeat_timeout,
        not_ready_deletion_timeout=seconds("not_ready_deletion_timeout", 600.0),
        status_interval=seconds("status_interval", 1.0),
        auth=_auth(pick, store),
        election=_election(pick, seconds, store, env),
        pod_name=env.get("POD_NAME") or None,
        webhook=webhook_settings_from(pick, store.kind),
        peer_key_file=Path(key_file) if (key_file := pick("peer_key_file")) else None,
    )
    return settings, bool(parsed.verbose)


def _election(
    pick: Callable[[str], str | None],
    seconds: Callable[[str, float], float],
    store: StoreSettings,
    env: Mapping[str, str],
) -> ElectionSettings | None:
    wanted = pick("leader_elect")
    if wanted is not None and wanted.lower() not in ("true", "1", "yes", "false", "0", "no"):
        raise UsageError(f"MODELCACHE_LEADER_ELECT {wanted!r}: use true or false")
    elect = store.kind == "kube" if wanted is None else wanted.lower() in ("true", "1", "yes")
    if not elect:
        return None
    if store.kind != "kube":
        raise UsageError(
            "--leader-elect needs --store kube (the Lease lives in the Kubernetes API); the "
            "embedded store has one coordinator: drop --leader-elect"
        )
    duration = seconds("lease_duration", 15.0)
    renew = seconds("lease_renew_deadline", duration * 2 / 3)
    retry = seconds("lease_retry_period", duration * 2 / 15)
    if not retry < renew < duration:
        raise UsageError(
            f"leader election needs --lease-retry-period ({retry:g}s) < --lease-renew-deadline "
            f"({renew:g}s) < --lease-duration ({duration:g}s): a leader must give up before a "
            "standby may take over"
        )
    # A pod's name is unique while it lives; elsewhere the host name could be shared.
    identity = env.get("POD_NAME") or f"{socket.gethostname()}_{secrets.token_hex(4)}"
    return ElectionSettings(
        identity=identity,
        lease_name=pick("lease_name") or DEFAULT_LEASE_NAME,
        lease_duration=duration,
        renew_deadline=renew,
        retry_period=retry,
    )


def _auth(pick: Callable[[str], str | None], store: StoreSettings) -> AuthSettings:
    tokens = pick("agent_tokens")
    default_mode = "tokens" if tokens else "tokenreview" if store.kind == "kube" else "none"
    mode = pick("agent_auth") or default_mode
    if mode not in AUTH_MODES:
        raise UsageError(f"--agent-auth {mode!r}: use one of {', '.join(AUTH_MODES)}")
    if mode == "tokens" and not tokens:
        raise UsageError("--agent-auth tokens needs --agent-tokens FILE (node: token lines)")
    if mode != "tokens" and tokens:
        raise UsageError(f"--agent-tokens is only read with --agent-auth tokens, not {mode}")
    if mode == "tokenreview" and store.kind != "kube":
        raise UsageError(
            "--agent-auth tokenreview asks the Kubernetes API server: use it with --store kube, "
            "or give standalone agents tokens with --agent-tokens FILE"
        )
    reads = pick("auth_reads")
    if reads is not None and reads.lower() not in ("true", "1", "yes", "false", "0", "no"):
        raise UsageError(f"MODELCACHE_AUTH_READS {reads!r}: use true or false")
    if mode == "none" and reads is not None and reads.lower() in ("true", "1", "yes"):
        raise UsageError("--auth-reads needs agent authentication: give --agent-tokens FILE")
    account = pick("agent_service_account") or DEFAULT_AGENT_SERVICE_ACCOUNT
    if not account.startswith("system:serviceaccount:"):
        namespace, sep, name = account.partition(":")
        if not sep or not namespace or not name or ":" in name:
            raise UsageError(
                f"--agent-service-account {account!r}: write NAMESPACE:NAME, e.g. "
                "modelcache-system:modelcache-agent"
            )
        account = f"system:serviceaccount:{namespace}:{name}"
    return AuthSettings(
        mode=mode,
        tokens_file=Path(tokens) if tokens else None,
        gate_reads=reads is not None and reads.lower() in ("true", "1", "yes"),
        service_account=account,
        audience=pick("agent_token_audience") or DEFAULT_AGENT_AUDIENCE,
    )
