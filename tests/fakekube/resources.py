"""What the fake API server serves, and the Status errors it answers with.

The resource table is data: serving one more kind is one more `ResourceSpec` line. The flags
carry the differences between built-in types and CRD-backed custom resources that a client can
observe on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

JsonObject = dict[str, Any]


@dataclass(frozen=True)
class ResourceSpec:
    """One served resource.

    `custom` marks a CRD-backed resource, which the real server treats differently from built-in
    types: it tracks `metadata.generation`, requires `kind`/`apiVersion` in request bodies,
    refuses unconditional updates (PUT without `metadata.resourceVersion`), answers 415 to
    strategic merge patches and puts `kind`/`apiVersion` into list items.
    """

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = False
    status_subresource: bool = False
    custom: bool = False
    # Nodes keep the status given on create (kubelet registers itself with one); custom
    # resources with a status subresource drop it.
    status_on_create: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def prefix(self) -> str:
        """The API path the resource lives under, e.g. `/api/v1` or `/apis/group/version`."""
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    @property
    def qualified(self) -> str:
        """The name used in error messages: `nodes`, `localmodelcaches.serving.kserve.io`."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def singular(self) -> str:
        return self.kind.lower()


RESOURCES: tuple[ResourceSpec, ...] = (
    ResourceSpec("", "v1", "nodes", "Node", status_subresource=True, status_on_create=True),
    ResourceSpec(
        "serving.kserve.io",
        "v1alpha1",
        "localmodelcaches",
        "LocalModelCache",
        status_subresource=True,
        custom=True,
    ),
    # KServe's CRD for LocalModelNodeGroup declares no status subresource: status is written
    # through the main resource like any other field (and bumps metadata.generation).
    ResourceSpec(
        "serving.kserve.io",
        "v1alpha1",
        "localmodelnodegroups",
        "LocalModelNodeGroup",
        custom=True,
    ),
    ResourceSpec(
        "serving.kserve.io",
        "v1alpha1",
        "localmodelnodes",
        "LocalModelNode",
        status_subresource=True,
        custom=True,
    ),
    ResourceSpec("coordination.k8s.io", "v1", "leases", "Lease", namespaced=True),
    # The coordinator's own pods, which the leader labels for the Service.
    ResourceSpec(
        "", "v1", "pods", "Pod", namespaced=True, status_subresource=True, status_on_create=True
    ),
)


class ApiError(Exception):
    """A request the server refuses; the client receives it as a `Status` object."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        spec: ResourceSpec | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.spec = spec
        self.name = name

    def status(self) -> JsonObject:
        body: JsonObject = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.spec is not None:
            details: JsonObject = {"group": self.spec.group, "kind": self.spec.plural}
            if self.name:
                details["name"] = self.name
            body["details"] = details
        return body


def not_found(spec: ResourceSpec, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{spec.qualified} "{name}" not found', spec=spec, name=name)


def already_exists(spec: ResourceSpec, name: str) -> ApiError:
    return ApiError(
        409, "AlreadyExists", f'{spec.qualified} "{name}" already exists', spec=spec, name=name
    )


def conflict(spec: ResourceSpec, name: str, why: str | None = None) -> ApiError:
    why = why or (
        "the object has been modified; please apply your changes to the latest version "
        "and try again"
    )
    message = f'Operation cannot be fulfilled on {spec.qualified} "{name}": {why}'
    return ApiError(409, "Conflict", message, spec=spec, name=name)


def invalid(spec: ResourceSpec, name: str, field: str, detail: str) -> ApiError:
    group = f".{spec.group}" if spec.group else ""
    message = f'{spec.kind}{group} "{name}" is invalid: {field}: {detail}'
    return ApiError(422, "Invalid", message, spec=spec, name=name)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def expired(requested: int, oldest: int) -> ApiError:
    return ApiError(410, "Expired", f"too old resource version: {requested} ({oldest})")


def too_large(requested: int, current: int) -> ApiError:
    message = f"Timeout: Too large resource version: {requested}, current: {current}"
    return ApiError(504, "Timeout", message)


def unsupported_media_type(content_type: str, accepted: str) -> ApiError:
    message = (
        f"the body of the request was in an unknown format - accepted media types include: "
        f"{accepted} (got {content_type!r})"
    )
    return ApiError(415, "UnsupportedMediaType", message)
