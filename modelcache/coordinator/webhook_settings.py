"""Settings of the admission webhooks' HTTPS listener (`--webhook-*` flags, `MODELCACHE_WEBHOOK_*`).

Off unless `--webhook-listen` is given. The certificate defaults to where the Deployment mounts
the Secret that cert-manager (or the openssl path in daemonset/README.md) creates.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from modelcache.contract.errors import UsageError
from modelcache.contract.service_process import parse_listen

DEFAULT_WEBHOOK_CERT: Final = Path("/etc/modelcache/webhook-tls/tls.crt")
DEFAULT_WEBHOOK_KEY: Final = Path("/etc/modelcache/webhook-tls/tls.key")


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    host: str
    port: int
    cert_file: Path = DEFAULT_WEBHOOK_CERT
    key_file: Path = DEFAULT_WEBHOOK_KEY
    reload_interval: float = 60.0
    """Seconds between checks of the certificate files (cert-manager renews them in place; a
    missing certificate at start is waited for, as the Secret may come later)."""


def add_webhook_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--webhook-listen",
        help="HOST:PORT for the admission webhooks over HTTPS, e.g. 0.0.0.0:9443 (default: off; "
        "needs --store kube)",
    )
    parser.add_argument(
        "--webhook-cert", help=f"PEM certificate chain (default {DEFAULT_WEBHOOK_CERT})"
    )
    parser.add_argument("--webhook-key", help=f"PEM private key (default {DEFAULT_WEBHOOK_KEY})")


def webhook_settings_from(
    pick: Callable[[str], str | None], store_kind: str
) -> WebhookSettings | None:
    """From the flags (or MODELCACHE_WEBHOOK_LISTEN, ..._CERT, ..._KEY) `pick` returns."""
    listen = pick("webhook_listen")
    cert, key = pick("webhook_cert"), pick("webhook_key")
    if listen is None:
        if cert or key:
            raise UsageError("--webhook-cert and --webhook-key need --webhook-listen HOST:PORT")
        return None
    if store_kind != "kube":
        raise UsageError(
            "--webhook-listen needs --store kube: bound InferenceServices are pinned to node "
            "labels that only the Kubernetes store writes; drop --webhook-listen"
        )
    try:
        host, port = parse_listen(listen)
    except UsageError as e:
        raise UsageError(f"--webhook-listen {listen!r}: write HOST:PORT, e.g. 0.0.0.0:9443") from e
    return WebhookSettings(
        host=host,
        port=port,
        cert_file=Path(cert) if cert else DEFAULT_WEBHOOK_CERT,
        key_file=Path(key) if key else DEFAULT_WEBHOOK_KEY,
    )


__all__ = [
    "DEFAULT_WEBHOOK_CERT",
    "DEFAULT_WEBHOOK_KEY",
    "WebhookSettings",
    "add_webhook_arguments",
    "webhook_settings_from",
]
