"""Which InferenceServices are bound to which LocalModelCache, as the kube store watches them.

KServe (and our mutating webhook) bind an InferenceService to a cache with the label
``internal.serving.kserve.io/localmodel=<cache>``; that label is all we keep, so ten thousand
InferenceServices cost a dict entry each. The validating webhook reads it to refuse deleting a
cache that is still in use. Without the InferenceService CRD (or on the embedded store) the index
stays empty and says so through `watched`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from modelcache.coordinator.binding import LOCAL_MODEL_LABEL

ServiceKey = tuple[str, str]  # (namespace, name)


class InferenceServiceIndex:
    def __init__(self) -> None:
        self._cache_of: dict[ServiceKey, str] = {}
        self._by_cache: defaultdict[str, set[ServiceKey]] = defaultdict(set)
        self.watched = False
        """True once a store lists InferenceServices: an empty index then means "none"."""

    def observe(self, event: str, raw: Mapping[str, Any]) -> set[str]:
        """One watch event (ADDED, MODIFIED, DELETED) or listed object of an InferenceService;
        returns the caches whose users changed."""
        metadata = raw.get("metadata") or {}
        key = (str(metadata.get("namespace") or ""), str(metadata.get("name") or ""))
        labels = metadata.get("labels") or {}
        cache = labels.get(LOCAL_MODEL_LABEL) if event != "DELETED" else None
        before = self._cache_of.get(key)
        if before == cache:
            return set()
        changed = {before} if before is not None else set()
        if before is not None:
            del self._cache_of[key]
            self._by_cache[before].discard(key)
            if not self._by_cache[before]:
                del self._by_cache[before]
        if isinstance(cache, str) and cache:
            self._cache_of[key] = cache
            self._by_cache[cache].add(key)
            changed.add(cache)
        return changed

    def clear(self) -> set[str]:
        """Before a fresh listing: whatever it lacks was deleted meanwhile. Returns the caches
        that had users."""
        had = set(self._by_cache)
        self._cache_of.clear()
        self._by_cache.clear()
        return had

    def using(self, cache: str) -> list[ServiceKey]:
        return sorted(self._by_cache.get(cache, ()))

    def status_of(self, cache: str) -> list[dict[str, str]]:
        """KServe's `status.inferenceServices` of a cache: [{namespace, name}]."""
        return [{"namespace": ns, "name": name} for ns, name in self.using(cache)]


__all__ = ["InferenceServiceIndex", "ServiceKey"]
