"""The YAML files a dev run applies, and the one model it must stand in for.

The example cache names the real model (`hf://meta-llama/meta-llama-3-8b-instruct`); the dev run
serves a synthetic stand-in under that id and of its `modelSize`, so the files apply unchanged to
a real cluster once modelSize is the real one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from modelcache.contract.errors import UsageError
from modelcache.contract.objects import CACHE_KIND, ModelCache, parse_cache
from modelcache.contract.uris import HuggingFaceSource, parse_source_uri


@dataclass(frozen=True, slots=True)
class Examples:
    files: tuple[Path, ...]
    """Every YAML file of the folder, applied together (node groups first)."""
    cache: ModelCache
    repo_id: str
    """OWNER/MODEL the origin serves the stand-in as."""


def load_examples(folder: Path) -> Examples:
    """Read and check the folder (blocking). Exactly one LocalModelCache, with an hf:// source."""
    files = tuple(sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]))
    if not files:
        raise UsageError(f"no *.yaml files in {folder}: pass --examples DIR")
    caches: list[tuple[Path, ModelCache]] = []
    for path in files:
        try:
            documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise UsageError(f"cannot read {path}: {e}") from e
        for document in documents:
            if isinstance(document, dict) and document.get("kind") == CACHE_KIND:
                try:
                    caches.append((path, parse_cache(document)))
                except UsageError as e:
                    raise UsageError(f"{path}: {e}") from e
    if len(caches) != 1:
        raise UsageError(
            f"{folder} holds {len(caches)} LocalModelCaches; the dev run stands in for exactly "
            "one model: keep one"
        )
    path, cache = caches[0]
    source = parse_source_uri(cache.source_model_uri)
    if not isinstance(source, HuggingFaceSource):
        raise UsageError(
            f"{path}: localmodelcache/{cache.name}: the dev run serves hf:// models only, got "
            f"{cache.source_model_uri}"
        )
    return Examples(files, cache, source.repo_id)
