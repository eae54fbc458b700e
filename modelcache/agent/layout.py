"""The cache root on disk, as KServe lays it out plus what the agent keeps for itself.

    <cache-root>/models/<storage-key>/            a published model (what serving pods mount)
    <cache-root>/models/.<storage-key>.*          the pull engine's sidecars (staging, manifest)
    <cache-root>/agent/desired.json               the last desired list the coordinator sent

Everything here blocks (stat, scandir, fsync): call it on a thread.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from modelcache.contract.agent_wire import DesiredList, desired_to_raw, parse_desired
from modelcache.contract.errors import ModelCacheError

log = logging.getLogger(__name__)
_KEY = re.compile(r"^[0-9a-f]{16}$")
_SIDECAR = re.compile(r"^\.([0-9a-f]{16})\.(partial|manifest\.json|lock|retired)$")


@dataclass(frozen=True, slots=True)
class DiskEntries:
    """What `models/` holds, by storage key, plus names the agent did not create."""

    keys: frozenset[str]
    foreign: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CacheLayout:
    root: Path

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def desired_file(self) -> Path:
        return self.root / "agent" / "desired.json"

    def model_dir(self, storage_key: str) -> Path:
        return self.models / storage_key

    def prepare(self) -> None:
        self.models.mkdir(parents=True, exist_ok=True)
        self.desired_file.parent.mkdir(parents=True, exist_ok=True)
        probe = self.root / "agent" / ".write-probe"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise ModelCacheError(
                f"cache root {self.root} is not writable ({e.strerror}): mount the node's cache "
                "directory read-write or choose another --cache-root"
            ) from e

    def scan(self) -> DiskEntries:
        keys: set[str] = set()
        foreign: list[str] = []
        with os.scandir(self.models) as entries:
            for entry in entries:
                sidecar = _SIDECAR.match(entry.name)
                if sidecar:
                    keys.add(sidecar.group(1))
                elif _KEY.match(entry.name):
                    keys.add(entry.name)
                else:
                    foreign.append(entry.name)
        return DiskEntries(frozenset(keys), tuple(sorted(foreign)))

    def load_desired(self) -> DesiredList | None:
        """The last list saved, or None (first start, or a file that does not parse)."""
        try:
            text = self.desired_file.read_text()
        except FileNotFoundError:
            return None
        try:
            return parse_desired(json.loads(text))
        except (ValueError, ModelCacheError) as e:
            log.warning("ignoring %s (%s): waiting for the coordinator", self.desired_file, e)
            return None

    def save_desired(self, desired: DesiredList) -> None:
        """Atomically: a crash leaves the old list or the new one, never half of one."""
        path = self.desired_file
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(desired_to_raw(desired), f)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
