"""KServe's local-model objects (``serving.kserve.io/v1alpha1``): parsed once, validated with errors
that name the field, and kept in Kubernetes shape for the wire.

Raw objects stay dicts in Kubernetes shape (what the API server and our REST speak); the coordinator
computes on the frozen dataclasses parsed from them. `parse_*` raises `FieldError` naming the exact
field, so REST can answer 422 ``{"error": ..., "field": ...}`` and the CLI can print it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from modelcache.contract.errors import UsageError
from modelcache.contract.quantities import canonical_quantity, parse_quantity
from modelcache.contract.storage_keys import storage_key
from modelcache.contract.uris import parse_source_uri

GROUP: Final = "serving.kserve.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
CACHE_KIND: Final = "LocalModelCache"
NODE_GROUP_KIND: Final = "LocalModelNodeGroup"
NODE_KIND: Final = "LocalModelNode"
DEFAULT_NODE_GROUP_LABEL: Final = "serving.kserve.io/nodegroup"
CACHE_FINALIZER: Final = "localmodel.kserve.io/finalizer"
PEER_FETCH_ANNOTATION: Final = "modelcache.io/peer-fetch"
"""``"false"`` on a LocalModelCache or a LocalModelNodeGroup: its nodes fetch from the origin only
(an annotation, so KServe's schema and clients are untouched)."""

JsonObject = dict[str, Any]

# RFC 1123 subdomain (object names) and label values (node group names), as Kubernetes checks them.
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


class FieldError(UsageError):
    """One field of an object is wrong; `field` is its JSON path (``spec.modelSize``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


@dataclass(frozen=True, slots=True)
class Meta:
    name: str
    uid: str
    resource_version: str
    created: datetime
    deleting_since: datetime | None
    finalizers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ModelCache:
    meta: Meta
    source_model_uri: str
    model_size: int
    model_size_text: str
    node_groups: tuple[str, ...]
    service_account_name: str | None
    storage_key: str  # KServe's folder name, derived from source_model_uri once
    peer_fetch: bool = True
    """False when annotated modelcache.io/peer-fetch: "false"."""

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def deleting(self) -> bool:
        return self.meta.deleting_since is not None


@dataclass(frozen=True, slots=True)
class NodeGroup:
    meta: Meta
    storage_limit: int
    storage_limit_text: str
    peer_fetch: bool = True
    """False when annotated modelcache.io/peer-fetch: "false"."""

    @property
    def name(self) -> str:
        return self.meta.name


def now_rfc3339() -> str:
    return format_time(datetime.now(UTC))


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str, field: str) -> datetime:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (TypeError, ValueError) as e:
        raise FieldError(field, f"{text!r} is not an RFC 3339 time") from e


def _mapping(raw: object, field: str) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise FieldError(field, f"must be an object, got {type(raw).__name__}")
    return raw


def check_name(name: object, field: str = "metadata.name") -> str:
    if not isinstance(name, str) or not name:
        raise FieldError(field, "is required")
    if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        raise FieldError(
            field,
            f"{name!r} is not a valid name: use lowercase letters, digits, '-' and '.', "
            "starting and ending with a letter or digit (at most 253 characters)",
        )
    return name


def check_group_name(name: object, field: str) -> str:
    if not isinstance(name, str) or len(name) > 63 or not _LABEL_VALUE.match(name):
        raise FieldError(
            field,
            f"{name!r} is not a valid node group: it is a label value (letters, digits, '-', '_', "
            "'.', at most 63 characters)",
        )
    return name


def _check_kind(raw: Mapping[str, Any], kind: str) -> None:
    api_version = raw.get("apiVersion", API_VERSION)
    if api_version != API_VERSION:
        raise FieldError("apiVersion", f"must be {API_VERSION!r}, got {api_version!r}")
    if raw.get("kind", kind) != kind:
        raise FieldError("kind", f"must be {kind!r}, got {raw.get('kind')!r}")


def _parse_meta(raw: Mapping[str, Any]) -> Meta:
    metadata = _mapping(raw.get("metadata", {}), "metadata")
    name = check_name(metadata.get("name"))
    created = metadata.get("creationTimestamp")
    deleting = metadata.get("deletionTimestamp")
    return Meta(
        name=name,
        uid=str(metadata.get("uid", "")),
        resource_version=str(metadata.get("resourceVersion", "")),
        created=(
            parse_time(created, "metadata.creationTimestamp")
            if created
            else datetime.fromtimestamp(0, UTC)
        ),
        deleting_since=parse_time(deleting, "metadata.deletionTimestamp") if deleting else None,
        finalizers=tuple(metadata.get("finalizers") or ()),
    )


def _peer_fetch(raw: Mapping[str, Any]) -> bool:
    metadata = _mapping(raw.get("metadata", {}), "metadata")
    annotations = _mapping(metadata.get("annotations") or {}, "metadata.annotations")
    value = annotations.get(PEER_FETCH_ANNOTATION, "true")
    if value not in ("true", "false"):
        raise FieldError(
            f"metadata.annotations[{PEER_FETCH_ANNOTATION}]",
            f'must be "true" or "false", got {value!r}',
        )
    return bool(value == "true")


def _positive_quantity(value: object, field: str) -> tuple[int, str]:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise FieldError(field, "is required: a Kubernetes quantity such as 10Gi or 500M")
    text = str(value)
    try:
        amount = parse_quantity(text)
    except UsageError as e:
        raise FieldError(field, str(e)) from e
    if amount <= 0:
        raise FieldError(field, f"must be greater than zero, got {text!r}")
    return math.ceil(amount), canonical_quantity(text)


def normalize_cache(raw: Mapping[str, Any]) -> JsonObject:
    """The object as it will be stored: KServe's spelling, canonical quantities, no status.

    Accepts the seed's ``spec.nodeGroup`` (a list) as an alias of ``spec.nodeGroups``.
    """
    raw = _mapping(raw, "object")
    _check_kind(raw, CACHE_KIND)
    _parse_meta(raw)
    _peer_fetch(raw)
    spec = dict(_mapping(raw.get("spec"), "spec"))
    if "nodeGroup" in spec:
        alias = spec.pop("nodeGroup")
        if "nodeGroups" in spec and spec["nodeGroups"] != alias:
            raise FieldError("spec.nodeGroup", "conflicts with spec.nodeGroups: give only one")
        spec["nodeGroups"] = alias
    uri = spec.get("sourceModelUri")
    if not isinstance(uri, str) or not uri:
        raise FieldError("spec.sourceModelUri", "is required, e.g. hf://meta-llama/meta-llama-3-8b")
    try:
        parse_source_uri(uri)
    except UsageError as e:
        raise FieldError("spec.sourceModelUri", str(e)) from e
    _, spec["modelSize"] = _positive_quantity(spec.get("modelSize"), "spec.modelSize")
    groups = spec.get("nodeGroups")
    if not isinstance(groups, list) or not groups:
        raise FieldError("spec.nodeGroups", "must list at least one node group, e.g. [a100]")
    for index, group in enumerate(groups):
        check_group_name(group, f"spec.nodeGroups[{index}]")
    if len(set(groups)) != len(groups):
        raise FieldError("spec.nodeGroups", f"lists a node group twice: {groups}")
    account = spec.get("serviceAccountName")
    if account is not None and not isinstance(account, str):
        raise FieldError("spec.serviceAccountName", "must be a string")
    return _normalized(raw, CACHE_KIND, spec)


def normalize_node_group(raw: Mapping[str, Any]) -> JsonObject:
    raw = _mapping(raw, "object")
    _check_kind(raw, NODE_GROUP_KIND)
    _parse_meta(raw)
    _peer_fetch(raw)
    spec = dict(_mapping(raw.get("spec"), "spec"))
    _, spec["storageLimit"] = _positive_quantity(spec.get("storageLimit"), "spec.storageLimit")
    for optional in ("persistentVolumeSpec", "persistentVolumeClaimSpec"):
        if optional in spec:
            _mapping(spec[optional], f"spec.{optional}")
    return _normalized(raw, NODE_GROUP_KIND, spec)


def _normalized(raw: Mapping[str, Any], kind: str, spec: JsonObject) -> JsonObject:
    metadata = dict(raw.get("metadata", {}))
    result: JsonObject = {"apiVersion": API_VERSION, "kind": kind, "metadata": metadata}
    result["spec"] = spec
    if "status" in raw:
        result["status"] = raw["status"]
    return result


def parse_cache(raw: Mapping[str, Any]) -> ModelCache:
    normalized = normalize_cache(raw)
    spec = normalized["spec"]
    size, size_text = _positive_quantity(spec["modelSize"], "spec.modelSize")
    return ModelCache(
        meta=_parse_meta(normalized),
        source_model_uri=spec["sourceModelUri"],
        model_size=size,
        model_size_text=size_text,
        node_groups=tuple(spec["nodeGroups"]),
        service_account_name=spec.get("serviceAccountName"),
        storage_key=storage_key(spec["sourceModelUri"]),
        peer_fetch=_peer_fetch(normalized),
    )


def parse_node_group(raw: Mapping[str, Any]) -> NodeGroup:
    normalized = normalize_node_group(raw)
    limit, limit_text = _positive_quantity(normalized["spec"]["storageLimit"], "spec.storageLimit")
    return NodeGroup(
        meta=_parse_meta(normalized),
        storage_limit=limit,
        storage_limit_text=limit_text,
        peer_fetch=_peer_fetch(normalized),
    )
