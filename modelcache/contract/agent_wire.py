"""What agents and the coordinator say to each other over HTTP (``/v1/agents/{node}/...``).

Three calls, all JSON:
- ``POST /v1/agents/{node}/register`` with `RawRegistration`; answers `RawRegistered`.
- ``GET /v1/agents/{node}/desired?generation=G&wait=SECONDS``: the models the node must hold
  (`RawDesired`). Returns at once when the list's generation differs from G, otherwise waits up to
  SECONDS (long poll) and answers the same generation. The list is a positive instruction: what is
  not in it may be deleted.
  Each model lists the node's peers for it (nodes of the same group, with their agent URL, that
  hold or are pulling it; none when peer fetching is off for the cache or the group), and the list
  carries the group's ``peerToken``: what agents of the group show each other (see `peer_wire`).
- ``POST /v1/agents/{node}/status`` with `RawStatusReport`: the full state of every model the node
  holds or works on (a storage key absent from the report is not on the node). Sent on change and
  as the heartbeat.

Parsing lives here so both sides check the same rules and answer 422 with the field at fault.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, NotRequired, TypedDict, get_args

from modelcache.contract.objects import FieldError, check_group_name

ModelState = Literal[
    "ModelDownloadPending", "ModelDownloading", "ModelDownloaded", "ModelDownloadError"
]
NodeState = Literal[
    "NodeNotReady", "NodeDownloadPending", "NodeDownloading", "NodeDownloaded", "NodeDownloadError"
]
MODEL_STATES: Final[tuple[ModelState, ...]] = get_args(ModelState)
NODE_STATE_OF_MODEL_STATE: Final[Mapping[ModelState, NodeState]] = {
    "ModelDownloadPending": "NodeDownloadPending",
    "ModelDownloading": "NodeDownloading",
    "ModelDownloaded": "NodeDownloaded",
    "ModelDownloadError": "NodeDownloadError",
}


class RawDisk(TypedDict):
    capacityBytes: int
    freeBytes: int


class RawRegistration(TypedDict):
    nodeGroup: NotRequired[str | None]
    address: NotRequired[str]
    disk: RawDisk


class RawRegistered(TypedDict):
    node: str
    nodeGroup: str | None
    heartbeatSeconds: float


class RawPeer(TypedDict):
    node: str
    url: str


class RawDesiredModel(TypedDict):
    storageKey: str
    sourceModelUri: str
    modelSizeBytes: int
    caches: list[str]
    nodeGroup: str
    peers: NotRequired[list[RawPeer]]


class RawDesired(TypedDict):
    generation: int
    nodeGroup: str | None
    models: list[RawDesiredModel]
    peerToken: NotRequired[str | None]


class RawModelReport(TypedDict):
    storageKey: str
    state: ModelState
    bytesDone: NotRequired[int]
    bytesTotal: NotRequired[int]
    rateBytesPerSecond: NotRequired[float]
    reason: NotRequired[str]
    message: NotRequired[str]
    startedAt: NotRequired[str]
    finishedAt: NotRequired[str]


class RawStatusReport(TypedDict):
    disk: RawDisk
    models: list[RawModelReport]


@dataclass(frozen=True, slots=True)
class Disk:
    capacity_bytes: int
    free_bytes: int


@dataclass(frozen=True, slots=True)
class Registration:
    node_group: str | None
    address: str
    disk: Disk


@dataclass(frozen=True, slots=True)
class ModelReport:
    storage_key: str
    state: ModelState
    bytes_done: int
    bytes_total: int
    rate: float
    reason: str
    message: str
    started_at: str | None
    finished_at: str | None


@dataclass(frozen=True, slots=True)
class StatusReport:
    disk: Disk
    models: Mapping[str, ModelReport]


def _object(raw: object, field: str) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise FieldError(field, "must be a JSON object")
    return raw


def _count(raw: Mapping[str, Any], key: str, field: str, *, default: int | None = None) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FieldError(f"{field}.{key}", "must be a non-negative integer")
    return value


def _text(raw: Mapping[str, Any], key: str, field: str) -> str | None:
    value = raw.get(key)
    if value is not None and not isinstance(value, str):
        raise FieldError(f"{field}.{key}", "must be a string")
    return value


def parse_disk(raw: object, field: str = "disk") -> Disk:
    disk = _object(raw, field)
    return Disk(_count(disk, "capacityBytes", field), _count(disk, "freeBytes", field))


def parse_registration(raw: object) -> Registration:
    body = _object(raw, "body")
    group = body.get("nodeGroup")
    if group is not None:
        check_group_name(group, "nodeGroup")
    return Registration(
        node_group=group,
        address=_text(body, "address", "body") or "",
        disk=parse_disk(body.get("disk")),
    )


def parse_model_report(raw: object, field: str) -> ModelReport:
    model = _object(raw, field)
    key = model.get("storageKey")
    if not isinstance(key, str) or len(key) != 16:
        raise FieldError(f"{field}.storageKey", "must be the 16-hex-digit storage key")
    state = model.get("state")
    if state not in MODEL_STATES:
        raise FieldError(f"{field}.state", f"must be one of {', '.join(MODEL_STATES)}")
    rate = model.get("rateBytesPerSecond", 0.0)
    if isinstance(rate, bool) or not isinstance(rate, int | float) or rate < 0:
        raise FieldError(f"{field}.rateBytesPerSecond", "must be a non-negative number")
    return ModelReport(
        storage_key=key,
        state=state,
        bytes_done=_count(model, "bytesDone", field, default=0),
        bytes_total=_count(model, "bytesTotal", field, default=0),
        rate=float(rate),
        reason=_text(model, "reason", field) or "",
        message=_text(model, "message", field) or "",
        started_at=_text(model, "startedAt", field),
        finished_at=_text(model, "finishedAt", field),
    )


def parse_status_report(raw: object) -> StatusReport:
    body = _object(raw, "body")
    models = body.get("models", [])
    if not isinstance(models, list):
        raise FieldError("models", "must be a list")
    parsed = [parse_model_report(m, f"models[{i}]") for i, m in enumerate(models)]
    return StatusReport(parse_disk(body.get("disk")), {m.storage_key: m for m in parsed})


def model_report_to_raw(report: ModelReport) -> RawModelReport:
    raw: RawModelReport = {
        "storageKey": report.storage_key,
        "state": report.state,
        "bytesDone": report.bytes_done,
        "bytesTotal": report.bytes_total,
        "rateBytesPerSecond": report.rate,
    }
    if report.reason:
        raw["reason"] = report.reason
    if report.message:
        raw["message"] = report.message
    if report.started_at:
        raw["startedAt"] = report.started_at
    if report.finished_at:
        raw["finishedAt"] = report.finished_at
    return raw


@dataclass(frozen=True, slots=True)
class Peer:
    node: str
    url: str
    """The peer agent's base URL (what it registered as `address`)."""


@dataclass(frozen=True, slots=True)
class WantedModel:
    """One model the coordinator wants on a node (the agent's view of `RawDesiredModel`)."""

    storage_key: str
    source_model_uri: str
    model_size_bytes: int
    caches: tuple[str, ...]
    node_group: str
    peers: tuple[Peer, ...] = ()


@dataclass(frozen=True, slots=True)
class DesiredList:
    generation: int
    node_group: str | None
    models: Mapping[str, WantedModel]
    """By storage key."""
    peer_token: str | None = None
    """The node group's token for peer requests (sent and accepted)."""


def _peers(raw: object, field: str) -> tuple[Peer, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise FieldError(field, "must be a list of {node, url}")
    peers = []
    for i, item in enumerate(raw):
        peer = _object(item, f"{field}[{i}]")
        node, url = _text(peer, "node", f"{field}[{i}]"), _text(peer, "url", f"{field}[{i}]")
        if not node or not url or not url.startswith(("http://", "https://")):
            raise FieldError(f"{field}[{i}]", "needs node and an http(s) url")
        peers.append(Peer(node, url.rstrip("/")))
    return tuple(peers)


def desired_model_to_raw(model: WantedModel) -> RawDesiredModel:
    raw: RawDesiredModel = {
        "storageKey": model.storage_key,
        "sourceModelUri": model.source_model_uri,
        "modelSizeBytes": model.model_size_bytes,
        "caches": list(model.caches),
        "nodeGroup": model.node_group,
    }
    if model.peers:
        raw["peers"] = [{"node": p.node, "url": p.url} for p in model.peers]
    return raw


def parse_desired(raw: object) -> DesiredList:
    body = _object(raw, "body")
    models = body.get("models", [])
    if not isinstance(models, list):
        raise FieldError("models", "must be a list")
    wanted: dict[str, WantedModel] = {}
    for i, item in enumerate(models):
        field = f"models[{i}]"
        model = _object(item, field)
        key = model.get("storageKey")
        if not isinstance(key, str) or len(key) != 16:
            raise FieldError(f"{field}.storageKey", "must be the 16-hex-digit storage key")
        uri = _text(model, "sourceModelUri", field)
        if not uri:
            raise FieldError(f"{field}.sourceModelUri", "is required")
        caches = model.get("caches", [])
        if not isinstance(caches, list) or not all(isinstance(c, str) for c in caches):
            raise FieldError(f"{field}.caches", "must be a list of cache names")
        wanted[key] = WantedModel(
            storage_key=key,
            source_model_uri=uri,
            model_size_bytes=_count(model, "modelSizeBytes", field, default=0),
            caches=tuple(caches),
            node_group=_text(model, "nodeGroup", field) or "",
            peers=_peers(model.get("peers"), f"{field}.peers"),
        )
    group = body.get("nodeGroup")
    if group is not None and not isinstance(group, str):
        raise FieldError("nodeGroup", "must be a string or null")
    return DesiredList(
        _count(body, "generation", "body", default=0),
        group,
        wanted,
        peer_token=_text(body, "peerToken", "body") or None,
    )


def desired_to_raw(desired: DesiredList) -> RawDesired:
    raw: RawDesired = {
        "generation": desired.generation,
        "nodeGroup": desired.node_group,
        "models": [desired_model_to_raw(m) for m in desired.models.values()],
    }
    if desired.peer_token:
        raw["peerToken"] = desired.peer_token
    return raw
