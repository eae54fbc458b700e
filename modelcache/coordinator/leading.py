"""Leader election between coordinator replicas, on one coordination.k8s.io/v1 Lease.

Only the leader acts: it serves agents and users and writes statuses; a standby waits and tries
to take the Lease every retry period. Both are Ready (so a PodDisruptionBudget of one may evict
either); the Service reaches the leader alone because it also selects `LEADER_LABEL`, which the
leader puts on its own pod once it serves and takes off when it stops (`RoleLabel`). Everything
the coordinator knows lives in the CRs, so a new leader starts by loading them.

The rules are client-go's leaderelection: every write of the Lease is an update at the version we
read (409: someone else was quicker, we lost that round); a standby takes the Lease over once it
has seen no change to it for `leaseDurationSeconds` on its own monotonic clock (never comparing
wall clocks across machines), or at once when it is released (empty holder). The leader renews
every retry period and steps down when it could not renew for `renew_deadline`, which is shorter
than the lease duration: it has stopped acting before anyone may take over. Stepping down means
exiting (as client-go's users do): the pod restarts as a standby, with nothing half-changed in
memory. A graceful shutdown releases the Lease after the last status write, so the handover then
takes one retry period instead of a lease duration.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from datetime import UTC, datetime
from typing import NoReturn

from modelcache.contract.errors import ModelCacheError, TemporaryError
from modelcache.coordinator.settings import ElectionSettings
from modelcache.coordinator.stores.base import (
    LeaseKeeper,
    LeaseRecord,
    ObjectConflictError,
    ObjectNotFoundError,
    PodLabeller,
)

log = logging.getLogger(__name__)
JITTER = 1.2  # a standby waits retry_period times up to this, so standbys do not move in step
LEADER_LABEL = "modelcache.io/coordinator-role"
"""On the leader's pod only; the Service selects it (daemonset/coordinator/service.yaml)."""
LEADER = "leader"
LABEL_BACKOFF_MAX = 30.0


class LeadershipLostError(ModelCacheError):
    """This replica no longer holds the Lease: it must stop acting at once."""


def micro_time(moment: datetime | None = None) -> str:
    """A Kubernetes MicroTime: RFC 3339 in UTC with microseconds."""
    return (moment or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Leadership:
    """This replica's side of the election: `acquire`, then `keep` until cancelled or lost."""

    def __init__(self, keeper: LeaseKeeper, settings: ElectionSettings, where: str) -> None:
        self.keeper = keeper
        self.settings = settings
        self.where = where
        """namespace/name of the Lease, for messages."""
        self.identity = settings.identity
        self.leading = False
        self.holder = ""
        """The holder last seen on the Lease (ours while leading)."""
        self.valid_until = 0.0
        """Loop time until which the leader may act without another renewal."""
        self.lost: str | None = None
        """Why this replica stepped down (it is about to exit), or None."""
        self._observed: LeaseRecord | None = None
        self._observed_at = 0.0  # loop time the Lease last changed under our eyes
        self._read_at: float | None = None  # loop time the Lease was last read or written

    @property
    def in_touch(self) -> bool:
        """The Lease was read within a lease duration: this replica reaches the API server and
        would take over (a standby's readiness)."""
        read_at = self._read_at
        return read_at is not None and self._now() - read_at <= self.settings.lease_duration

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    async def acquire(self) -> None:
        """Wait until this replica holds the Lease."""
        settings = self.settings
        while True:
            try:
                async with asyncio.timeout(settings.renew_deadline):
                    if await self._try_acquire_or_renew():
                        break
            except (ModelCacheError, TimeoutError) as e:
                log.warning("could not read or take Lease %s: %s; trying again", self.where, e)
            await asyncio.sleep(settings.retry_period * random.uniform(1.0, JITTER))
        log.warning(
            "leading: %s holds Lease %s (renewing every %gs)",
            self.identity,
            self.where,
            settings.retry_period,
        )

    async def keep(self) -> NoReturn:
        """Renew until cancelled; raise `LeadershipLostError` (having set `leading` to False
        first) once another replica holds the Lease or no renewal got through before the
        deadline, never later than the deadline itself."""
        settings = self.settings
        while True:
            deadline = self.valid_until
            await asyncio.sleep(max(min(settings.retry_period, deadline - self._now()), 0))
            try:
                async with asyncio.timeout_at(deadline):
                    held = await self._try_acquire_or_renew()
            except TimeoutError:
                self._lose(f"no renewal got through for {settings.renew_deadline:g}s")
            except ModelCacheError as e:
                log.warning("could not renew Lease %s: %s; trying again", self.where, e)
                continue
            if not held and self.holder not in ("", self.identity):
                self._lose(f"{self.holder} holds it now")

    def _lose(self, why: str) -> NoReturn:
        self.leading = False
        self.lost = f"lost Lease {self.where} ({why})"
        raise LeadershipLostError(
            f"{self.lost}: stopped writing; exiting so that this replica restarts as a standby"
        )

    async def release(self) -> None:
        """Give the Lease up (graceful shutdown): a standby takes it at its next try."""
        if not self.leading:
            return
        self.leading = False
        name = self.settings.lease_name
        try:
            async with asyncio.timeout(self.settings.retry_period):
                # Read it again: a renewal cut short by the shutdown may have changed it.
                current = await self.keeper.get_lease(name)
                if current is None or current.holder != self.identity:
                    return
                now = micro_time()
                released = dataclasses.replace(
                    current, holder="", duration_seconds=1, acquire_time=now, renew_time=now
                )
                await self.keeper.update_lease(name, released)
        except (ModelCacheError, TimeoutError) as e:
            log.warning(
                "could not release Lease %s (%s): a standby takes over once it expires",
                self.where,
                e,
            )
            return
        log.warning("released Lease %s", self.where)

    async def _try_acquire_or_renew(self) -> bool:
        """One round: True when this replica holds the Lease afterwards."""
        started = self._now()
        settings, keeper, name = self.settings, self.keeper, self.settings.lease_name
        now = micro_time()
        mine = LeaseRecord(
            holder=self.identity,
            duration_seconds=settings.lease_seconds,
            acquire_time=now,
            renew_time=now,
        )
        current = await keeper.get_lease(name)
        if current is None:
            self._read_at = self._now()
            try:
                self._held(await keeper.create_lease(name, mine), started)
            except ObjectConflictError:
                return False  # another replica created it first
            return True
        self._observe(current)
        if current.holder and current.holder != self.identity and not self._expired(current):
            return False
        if current.holder == self.identity:  # renewing
            wanted = dataclasses.replace(
                current, duration_seconds=settings.lease_seconds, renew_time=now
            )
        else:  # taking over a released or expired Lease
            wanted = dataclasses.replace(
                mine, transitions=current.transitions + 1, version=current.version
            )
        try:
            self._held(await keeper.update_lease(name, wanted), started)
        except ObjectConflictError:
            return False  # changed since we read it: someone else renewed or took it
        return True

    def _observe(self, record: LeaseRecord) -> None:
        self._read_at = self._now()
        if record != self._observed:
            self._observed, self._observed_at = record, self._now()
        self.holder = record.holder

    def _expired(self, record: LeaseRecord) -> bool:
        return self._now() > self._observed_at + record.duration_seconds

    def _held(self, record: LeaseRecord, started: float) -> None:
        """We hold `record` as written by a request that left at loop time `started`: a standby
        counts the lease duration from when it sees the write, which is later than that."""
        self._observe(record)
        self.leading = True
        self.valid_until = started + self.settings.renew_deadline


class RoleLabel:
    """`LEADER_LABEL` on this replica's pod, which the Service selects by: set once the leader
    serves, removed when it stops, and cleared at start (a leader that exited restarts in the
    same pod, label and all). A pod that keeps a stale label (its process killed) gets no
    traffic anyway once it fails its readiness probe, and a standby that gets a request answers
    503, which callers retry.

    Nothing to do without a pod name (outside a pod) or with a store that cannot label pods."""

    def __init__(
        self,
        labeller: PodLabeller | None,
        pod: str | None,
        namespace: str,
        *,
        retry_period: float,
    ) -> None:
        self._labeller = labeller if pod else None
        self.pod = pod or ""
        self.where = f"pod {namespace}/{pod}"
        self.retry_period = retry_period
        self.marked = False
        """The label may be on the pod (a request to set it left)."""
        if labeller is not None and not pod:
            log.warning(
                "POD_NAME is not set: not labelling this replica's pod %s=%s; a Service that "
                "selects by it (daemonset/coordinator/service.yaml) sends nothing here. Set "
                "POD_NAME from the downward API (metadata.name)",
                LEADER_LABEL,
                LEADER,
            )

    async def clear(self) -> None:
        """At start, before standing for election: this replica is not the leader (yet)."""
        if self._labeller is not None:
            self.marked = True  # it may be there
            await self._set(None, "removing a stale leader label from")

    async def mark(self) -> None:
        """The leader serves: let the Service send agents and users here."""
        if self._labeller is not None:
            self.marked = True
            await self._set(LEADER, "labelling")

    async def unmark(self) -> None:
        """Stopping (before the Lease is released, so that a successor's label never meets
        ours): one try within a retry period; a pod that keeps the label is not Ready for long."""
        if self._labeller is None or not self.marked:
            return
        try:
            async with asyncio.timeout(self.retry_period):
                await self._labeller.patch_pod_labels(self.pod, {LEADER_LABEL: None})
        except (ModelCacheError, TimeoutError) as e:
            log.warning("could not remove the leader label from %s: %s", self.where, e)
            return
        self.marked = False
        log.info("removed the leader label from %s", self.where)

    async def _set(self, value: str | None, doing: str) -> None:
        """Retry passing faults with backoff until it gets through; give up (loudly) on a
        refusal that retrying cannot fix (no such pod, no RBAC)."""
        assert self._labeller is not None
        delay = self.retry_period
        while True:
            try:
                async with asyncio.timeout(max(self.retry_period * 5, 1.0)):  # one API call
                    await self._labeller.patch_pod_labels(self.pod, {LEADER_LABEL: value})
            except (TemporaryError, TimeoutError) as e:
                wait = max(delay, getattr(e, "retry_after", None) or 0.0)
                log.warning("%s %s failed (%s); retrying in %.1fs", doing, self.where, e, wait)
                await asyncio.sleep(wait)
                delay = min(delay * 2, LABEL_BACKOFF_MAX)
                continue
            except ModelCacheError as e:
                log.error(  # noqa: TRY400 - the message is the advice; a traceback adds nothing
                    "%s %s failed: %s; the Service selects the leader by %s=%s: check POD_NAME "
                    "and that the coordinator's Role may patch pods (daemonset/coordinator/"
                    "rbac.yaml)",
                    doing,
                    self.where,
                    e,
                    LEADER_LABEL,
                    LEADER,
                )
                if isinstance(e, ObjectNotFoundError):
                    self.marked = False  # no such pod: no label to take off either
                return
            break
        self.marked = value is not None
        log.info("%s %s: done", doing, self.where)
