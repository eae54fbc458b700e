"""The admission side of a running coordinator: the webhooks served over HTTPS on their own port,
and the per-model node labels they pin InferenceServices to.

The listener has its own AppRunner, so the agents' port never speaks TLS and the webhooks never
share a port with the agents' long polls. It answers 503 until the coordinator is ready (objects
loaded; with leader election, the leader): the webhook configuration's failurePolicy then
decides, rather than a decision made on an empty registry.

The certificate is re-read when its files change (cert-manager renews it in place, by swapping
the Secret volume's symlink): every `reload_interval` the files are stat'ed, and a changed pair
is loaded into a fresh SSLContext that the listening context's SNI callback hands to each new
handshake. A pair that does not load (half written, key and certificate not matching) is
logged and the previous one kept. Missing files at start are waited for: the Deployment mounts
the Secret as optional, and the listener opens once it appears.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from pathlib import Path

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from modelcache.coordinator.admission_view import RegistryAdmissionView
from modelcache.coordinator.binding import BindingSettings
from modelcache.coordinator.node_labelling import NodeLabeller, NodeLabelReconciler
from modelcache.coordinator.service import Coordinator
from modelcache.coordinator.settings import CoordinatorSettings
from modelcache.coordinator.webhook_settings import WebhookSettings
from modelcache.coordinator.webhooks import build_webhook_app, serving_ssl_context

log = logging.getLogger(__name__)
_RETRY_AFTER_SECONDS = "5"

Stamp = tuple[tuple[int, int, int], ...]


def _stamp(*paths: Path) -> Stamp:
    """What changes when a file is replaced or rewritten (follows the Secret's symlinks)."""
    stats = [os.stat(path) for path in paths]
    return tuple((s.st_ino, s.st_size, s.st_mtime_ns) for s in stats)


class CertificateReloader:
    def __init__(self, cert_file: Path, key_file: Path) -> None:
        self.cert_file, self.key_file = cert_file, key_file
        self.current: ssl.SSLContext | None = None
        self._stamp: Stamp | None = None
        self._listening: ssl.SSLContext | None = None
        self._complained = False

    @property
    def listening_context(self) -> ssl.SSLContext:
        """The context the listener is created with: the first certificate loaded, switching
        each handshake to the newest one."""
        if self._listening is None:
            if self.current is None:
                raise RuntimeError("no certificate loaded yet")
            self._listening = self.current
            self._listening.sni_callback = self._newest
        return self._listening

    def _newest(
        self, connection: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        if self.current is not None and connection.context is not self.current:
            connection.context = self.current

    def _load(self) -> tuple[Stamp, ssl.SSLContext] | None:
        """In a thread: stat the files and, when they changed, load them."""
        stamp = _stamp(self.cert_file, self.key_file)
        if stamp == self._stamp:
            return None
        return stamp, serving_ssl_context(self.cert_file, self.key_file)

    async def reload(self) -> bool:
        """Load the files when they changed since the last load; True when a new pair is in use."""
        try:
            loaded = await asyncio.to_thread(self._load)
        except (OSError, ssl.SSLError) as e:
            if self.current is not None:
                log.warning(
                    "webhook certificate %s / %s does not load (%s): still serving the previous "
                    "one; fix or renew the Secret",
                    self.cert_file,
                    self.key_file,
                    e,
                )
            elif not self._complained:
                log.warning(
                    "no webhook certificate at %s / %s yet (%s): the admission webhooks are "
                    "served once it appears (the Secret modelcache-webhook-tls: see "
                    "daemonset/README.md)",
                    self.cert_file,
                    self.key_file,
                    e,
                )
                self._complained = True
            return False
        if loaded is None:
            return False
        self._stamp, self.current = loaded
        return True


def until_ready(ready: asyncio.Event) -> Middleware:
    @web.middleware
    async def gate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "POST" and not ready.is_set():
            body = {
                "error": "this coordinator is not ready (loading its objects, or standing by "
                "for the leader): the API server applies the webhook's failurePolicy; retry"
            }
            return web.Response(
                status=503,
                body=orjson.dumps(body),
                content_type="application/json",
                headers={"Retry-After": _RETRY_AFTER_SECONDS},
            )
        response: web.StreamResponse = await handler(request)
        return response

    return gate


class WebhookServer:
    def __init__(self, settings: WebhookSettings, app: web.Application) -> None:
        self.settings = settings
        self.certificates = CertificateReloader(settings.cert_file, settings.key_file)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        self._site: web.TCPSite | None = None

    @property
    def url(self) -> str | None:
        """https://HOST:PORT once listening."""
        if self._site is None:
            return None
        host, port = self._runner.addresses[0][:2]
        return f"https://{host}:{port}"

    async def start(self) -> None:
        await self._runner.setup()
        if await self.certificates.reload():
            await self._listen()

    async def _listen(self) -> None:
        site = web.TCPSite(
            self._runner,
            self.settings.host,
            self.settings.port,
            ssl_context=self.certificates.listening_context,
        )
        await site.start()
        self._site = site
        log.info("admission webhooks served on %s", self.url)

    async def keep_certificates(self) -> None:
        """Until cancelled: pick up renewed (or, at first, missing) certificates."""
        while True:
            await asyncio.sleep(self.settings.reload_interval)
            if await self.certificates.reload():
                if self._site is None:
                    await self._listen()
                else:
                    log.info("webhook certificate reloaded from %s", self.settings.cert_file)

    async def stop(self) -> None:
        await self._runner.cleanup()


class Admission:
    """The webhooks (when `settings.webhook` is set) and the node labeller (when the store labels
    nodes), started and stopped by the runtime beside the REST server."""

    def __init__(self, settings: CoordinatorSettings, coordinator: Coordinator) -> None:
        self.ready = coordinator.ready
        self.server: WebhookServer | None = None
        if settings.webhook is not None:
            app = build_webhook_app(
                RegistryAdmissionView(coordinator.registry),
                BindingSettings(node_group_label=settings.node_group_label),
            )
            app.middlewares.append(until_ready(coordinator.ready))
            self.server = WebhookServer(settings.webhook, app)
        store = coordinator.store
        self.labels: NodeLabelReconciler | None = None
        if isinstance(store, NodeLabeller):
            self.labels = NodeLabelReconciler(coordinator.registry, store, settings.status_interval)

    async def start(self) -> None:
        if self.server is not None:
            await self.server.start()

    def start_tasks(self) -> list[asyncio.Task[None]]:
        """The background tasks, for the runtime to supervise and cancel."""
        tasks = []
        if self.server is not None:
            tasks.append(
                asyncio.create_task(
                    self.server.keep_certificates(), name="coordinator-webhook-certificates"
                )
            )
        if self.labels is not None:
            tasks.append(
                asyncio.create_task(
                    self.labels.run_forever(self.ready), name="coordinator-node-labels"
                )
            )
        return tasks

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()


__all__ = ["Admission", "CertificateReloader", "WebhookServer", "until_ready"]
