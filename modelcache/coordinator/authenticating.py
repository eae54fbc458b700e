"""Who may speak for a node: an agent proves it with a bearer token bound to that node.

A node's agent writes that node's registration and status, and through them decides what the
coordinator believes is cached where (and when a deleted cache's files are gone). So every agent
write needs a token, and the token must belong to the node in the URL: a token from node A
reporting for node B is refused (403), however valid it is.

- Kubernetes (`tokenreview`): the DaemonSet projects a service account token with our audience;
  the API server's TokenReview says whose it is, and (Kubernetes >= 1.30) the node of the pod it
  is bound to. Answers are cached briefly: 10,000 agents reporting every 10 s must not cost
  1,000 TokenReviews a second.
- Standalone (`tokens`): a YAML file of `node: token` lines, re-read when it changes.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import yaml

from modelcache.contract.errors import ModelCacheError, PermanentError, TemporaryError, UsageError
from modelcache.coordinator.metrics import CoordinatorMetrics
from modelcache.coordinator.settings import AuthSettings
from modelcache.coordinator.stores.base import ReviewedToken, TokenReviewer

log = logging.getLogger(__name__)
MIN_TOKEN_LENGTH = 16
RELOAD_CHECK_SECONDS = 5.0
"""The tokens file is checked for changes at most this often (only when a token is unknown)."""


class UnauthenticatedError(PermanentError):
    """No token, or one nobody issued (HTTP 401)."""


class ForbiddenError(PermanentError):
    """A valid token that may not do this: another node's, or not an agent's (HTTP 403)."""


@dataclass(frozen=True, slots=True)
class AgentIdentity:
    node: str
    who: str
    """For messages: whose token it is ("the service account X (pod P)", "node N's token")."""


class Authenticator(Protocol):
    async def identify(self, token: str) -> AgentIdentity:
        """The node `token` speaks for; raises UnauthenticatedError, ForbiddenError, or
        TemporaryError when it cannot be checked now."""


class AgentGate:
    """Checks the agent calls (`/v1/agents/{node}/...`): writes always, reads when asked to."""

    def __init__(
        self, authenticator: Authenticator | None, *, gate_reads: bool = False, remedy: str = ""
    ) -> None:
        self.authenticator = authenticator
        self.gate_reads = gate_reads and authenticator is not None
        self._remedy = remedy

    async def check(self, node: str, authorization: str | None, *, write: bool) -> None:
        if self.authenticator is None or not (write or self.gate_reads):
            return
        token = self._bearer(node, authorization)
        identity = await self.authenticator.identify(token)
        if identity.node != node:
            raise ForbiddenError(
                f"token belongs to node {identity.node}, not {node} ({identity.who}): an agent "
                f"may only speak for its own node; check the agent's --node-name ({node}) and "
                "--token-file"
            )

    def _bearer(self, node: str, authorization: str | None) -> str:
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise UnauthenticatedError(
                f"no bearer token for node {node}: send the node's token as "
                f"'Authorization: Bearer TOKEN' ({self._remedy})"
            )
        return token.strip()


# --- standalone: a file of per-node tokens --------------------------------------------------------


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def parse_tokens(text: str, source: str) -> dict[str, str]:
    """`node: token` lines (a YAML mapping); every token at least 16 characters and unique.
    Every scalar stays text: node `0123` or `y` and an all-digit token are not numbers or bools."""
    try:
        loaded = yaml.load(text, Loader=yaml.BaseLoader)  # builds only str, list and dict
    except yaml.YAMLError as e:
        raise UsageError(f"{source} is not valid YAML: {e}") from e
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise UsageError(f"{source} must hold 'node: token' lines (a YAML mapping)")
    tokens: dict[str, str] = {}
    owners: dict[str, str] = {}
    for node, token in loaded.items():
        if not isinstance(node, str) or not isinstance(token, str):
            raise UsageError(f"{source}: {node!r}: write node: token, both as text")
        if len(token) < MIN_TOKEN_LENGTH:
            raise UsageError(
                f"{source}: the token of {node} is shorter than {MIN_TOKEN_LENGTH} characters: "
                "generate one with `openssl rand -hex 32`"
            )
        if token in owners:
            raise UsageError(
                f"{source}: {owners[token]} and {node} share a token: give every node its own"
            )
        owners[token] = node
        tokens[node] = token
    return tokens


class NodeTokens:
    """The tokens file, read at start and again when an unknown token arrives and the file has
    changed (so adding a node needs no restart)."""

    def __init__(self, path: Path, tokens: Mapping[str, str], mtime: float | None) -> None:
        self.path = path
        self._mtime = mtime
        self._checked = time.monotonic()
        self._use(tokens)

    @classmethod
    async def load(cls, path: Path) -> NodeTokens:
        tokens, mtime = await asyncio.to_thread(cls._read, path)
        log.warning("agent tokens for %d node(s) from %s", len(tokens), path)
        return cls(path, tokens, mtime)

    @staticmethod
    def _read(path: Path) -> tuple[dict[str, str], float]:
        try:
            mtime = path.stat().st_mtime
            text = path.read_text()
        except OSError as e:
            raise UsageError(f"cannot read --agent-tokens {path}: {e}") from e
        return parse_tokens(text, f"--agent-tokens {path}"), mtime

    def _use(self, tokens: Mapping[str, str]) -> None:
        self._by_node = {node: token.encode() for node, token in tokens.items()}
        self._by_digest = {_digest(token): node for node, token in tokens.items()}

    async def identify(self, token: str) -> AgentIdentity:
        node = self._owner(token)
        if node is None and await self._reloaded():
            node = self._owner(token)
        if node is None:
            raise UnauthenticatedError(
                f"the token is not in {self.path}: send the node's token from that file "
                "(agent: --token-file)"
            )
        return AgentIdentity(node, f"node {node}'s token")

    def _owner(self, token: str) -> str | None:
        node = self._by_digest.get(_digest(token))
        if node is None or not hmac.compare_digest(self._by_node[node], token.encode()):
            return None
        return node

    async def _reloaded(self) -> bool:
        now = time.monotonic()
        if now - self._checked < RELOAD_CHECK_SECONDS:
            return False
        self._checked = now
        try:
            mtime = (await asyncio.to_thread(self.path.stat)).st_mtime
            if mtime == self._mtime:
                return False
            tokens, self._mtime = await asyncio.to_thread(self._read, self.path)
        except (OSError, UsageError) as e:
            log.warning("keeping the agent tokens read before: %s", e)
            return False
        self._use(tokens)
        log.warning("agent tokens for %d node(s) re-read from %s", len(tokens), self.path)
        return True


# --- Kubernetes: projected service account tokens and TokenReview ---------------------------------


class ReviewedTokens:
    """Projected service account tokens, checked with TokenReview and cached for a short while.

    Accepted tokens are trusted for `review_ttl` (at most until they expire); refused ones for
    `denied_ttl`; a review that failed (API server down) is not remembered at all.
    """

    def __init__(
        self,
        reviewer: TokenReviewer,
        settings: AuthSettings,
        metrics: CoordinatorMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._reviewer = reviewer
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self._cache: OrderedDict[bytes, tuple[float, ReviewedToken]] = OrderedDict()

    async def identify(self, token: str) -> AgentIdentity:
        return self._identity(token, await self._review(token))

    async def _review(self, token: str) -> ReviewedToken:
        key = _digest(token)
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            review = await self._reviewer.review_token(token, self._settings.audience)
        except TemporaryError as e:
            self._metrics.token_reviews.labels("failed").inc()
            raise TemporaryError(
                f"cannot check the agent's token now: {e}", retry_after=e.retry_after
            ) from e
        except ModelCacheError as e:  # e.g. RBAC: ours to fix, the agent can only wait
            self._metrics.token_reviews.labels("failed").inc()
            log.warning("TokenReview failed: %s (the coordinator needs create on tokenreviews)", e)
            raise TemporaryError(f"cannot check the agent's token: {e}") from e
        self._metrics.token_reviews.labels("accepted" if review.authenticated else "refused").inc()
        ttl = self._settings.review_ttl if review.authenticated else self._settings.denied_ttl
        expires = now + ttl
        token_expiry = _jwt_expiry(token)
        if token_expiry is not None:
            expires = min(expires, now + token_expiry - time.time())
        self._remember(key, expires, review)
        return review

    def _remember(self, key: bytes, expires: float, review: ReviewedToken) -> None:
        cache = self._cache
        cache[key] = (expires, review)
        cache.move_to_end(key)
        while len(cache) > self._settings.review_cache_size:
            cache.popitem(last=False)  # the oldest answer, the first to expire

    def _identity(self, token: str, review: ReviewedToken) -> AgentIdentity:
        if not review.authenticated:
            why = review.error or "the API server does not know it"
            raise UnauthenticatedError(
                f"the token was refused: {why}; send the projected service account token "
                f"with audience {self._settings.audience!r} (agent: --token-file)"
            )
        expected = self._settings.service_account
        if review.username != expected:
            raise ForbiddenError(
                f"the token is {review.username}'s, not the agents' service account {expected}: "
                "run the agent with that service account, or set the coordinator's "
                "--agent-service-account"
            )
        who = f"{review.username}, pod {review.pod or '?'}"
        if review.node is None:
            raise ForbiddenError(
                f"the token ({who}) is bound to no node: project a service account token into "
                "the agent's pod (Kubernetes >= 1.30 names the pod's node in it)"
            )
        return AgentIdentity(review.node, who)


def _jwt_expiry(token: str) -> float | None:
    """The `exp` claim of a JWT (seconds since the epoch), read without checking the signature:
    it only shortens how long the API server's verdict is trusted."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except ValueError:
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


# --- assembly -------------------------------------------------------------------------------------


async def open_gate(
    settings: AuthSettings, store: object, metrics: CoordinatorMetrics
) -> AgentGate:
    if settings.mode == "tokens":
        assert settings.tokens_file is not None
        tokens = await NodeTokens.load(settings.tokens_file)
        remedy = f"standalone: the node's entry in {settings.tokens_file}"
        return AgentGate(tokens, gate_reads=settings.gate_reads, remedy=remedy)
    if settings.mode == "tokenreview":
        if not isinstance(store, TokenReviewer):
            raise UsageError("--agent-auth tokenreview needs --store kube")
        remedy = (
            f"Kubernetes: a projected service account token with audience {settings.audience!r}"
        )
        reviewed = ReviewedTokens(store, settings, metrics)
        return AgentGate(reviewed, gate_reads=settings.gate_reads, remedy=remedy)
    log.warning(
        "agent calls are not authenticated (--agent-auth none): anyone who reaches the "
        "coordinator can register and report for any node; give standalone agents tokens "
        "with --agent-tokens FILE"
    )
    return AgentGate(None)
