"""What the server stores for a requested write: the checks and field rules of the real
kube-apiserver's create and update strategies, with no storage of their own."""

from __future__ import annotations

import copy
import json
import re
import secrets
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from tests.fakekube.resources import (
    ApiError,
    JsonObject,
    ResourceSpec,
    bad_request,
    conflict,
    invalid,
)

# "main" and "status" follow the API's subresource rules; "direct" is a test's own hand on
# the store: any field may be written and no unconditional-update check applies.
Scope = Literal["main", "status", "direct"]

# Set by the server; an update never changes them.
_SYSTEM_FIELDS = (
    "name",
    "namespace",
    "uid",
    "creationTimestamp",
    "generation",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
)
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def prepare_create(spec: ResourceSpec, namespace: str, body: Any, scope: Scope) -> JsonObject:
    """The object to store for a create, system metadata filled in but no resourceVersion."""
    if not isinstance(body, dict):
        raise bad_request(f"the body of a {spec.kind} must be a JSON object")
    _check_type(spec, body, required=spec.custom and scope != "direct")
    obj = copy.deepcopy(body)
    meta = obj.setdefault("metadata", {})
    if not isinstance(meta, dict):
        raise bad_request("metadata must be a JSON object")
    if meta.pop("resourceVersion", None) and scope != "direct":
        raise ApiError(
            500, "InternalError", "resourceVersion should not be set on objects to be created"
        )
    if spec.namespaced:
        if meta.get("namespace") not in (None, "", namespace):
            raise bad_request(
                "the namespace of the provided object does not match the namespace sent "
                "on the request"
            )
        meta["namespace"] = namespace
    else:
        meta.pop("namespace", None)
    if not meta.get("name") and meta.get("generateName"):
        suffix = "".join(secrets.choice(_NAME_ALPHABET) for _ in range(5))
        meta["name"] = f"{meta['generateName']}{suffix}"
    if not meta.get("name"):
        raise invalid(spec, "", "metadata.name", "Required value: name or generateName is required")
    _check_name(spec, meta["name"])
    if spec.status_subresource and not spec.status_on_create and scope != "direct":
        obj.pop("status", None)
    for field in ("deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"):
        meta.pop(field, None)
    meta["uid"] = str(uuid.uuid4())
    meta["creationTimestamp"] = now()
    if spec.custom:
        meta["generation"] = 1
    else:
        meta.pop("generation", None)
    obj["kind"], obj["apiVersion"] = spec.kind, spec.api_version
    return obj


def prepare_update(spec: ResourceSpec, old: JsonObject, new: Any, scope: Scope) -> JsonObject:
    """The object to store for a requested update of `old` (its resourceVersion still old's).

    The main resource ignores status when a status subresource exists; `/status` takes status
    only. A stale `metadata.resourceVersion` or a different `metadata.uid` is a 409.
    """
    old_meta = old["metadata"]
    name = old_meta["name"]
    if not isinstance(new, dict):
        raise bad_request(f"the body of a {spec.kind} must be a JSON object")
    _check_type(spec, new, required=spec.custom and scope != "direct")
    meta = new.get("metadata") or {}
    if not isinstance(meta, dict):
        raise bad_request("metadata must be a JSON object")
    if meta.get("name") not in (None, "", name):
        raise bad_request(
            f"the name of the object ({meta['name']}) does not match the name on the URL ({name})"
        )
    if spec.namespaced and meta.get("namespace") not in (None, "", old_meta["namespace"]):
        raise bad_request(
            "the namespace of the provided object does not match the namespace sent on the request"
        )
    if meta.get("uid") and meta["uid"] != old_meta["uid"]:
        raise uid_mismatch(spec, name, meta["uid"], old_meta["uid"])
    if meta.get("resourceVersion"):
        if meta["resourceVersion"] != old_meta["resourceVersion"]:
            raise conflict(spec, name)
    elif spec.custom and scope != "direct":
        raise invalid(
            spec,
            name,
            "metadata.resourceVersion",
            "Invalid value: 0x0: must be specified for an update",
        )

    if scope == "status":
        result = copy.deepcopy(old)
        _set_or_drop(result, "status", new)
    else:
        result = copy.deepcopy(new)
        result_meta = result["metadata"] = copy.deepcopy(meta)
        for field in _SYSTEM_FIELDS:
            _set_or_drop(result_meta, field, old_meta)
        if spec.status_subresource and scope == "main":
            _set_or_drop(result, "status", old)
    result["kind"], result["apiVersion"] = spec.kind, spec.api_version
    result["metadata"]["resourceVersion"] = old_meta["resourceVersion"]

    if old_meta.get("deletionTimestamp"):
        before = old_meta.get("finalizers") or []
        added = [f for f in result["metadata"].get("finalizers") or [] if f not in before]
        if added:
            listed = ", ".join(f'"{f}"' for f in added)
            raise invalid(
                spec,
                name,
                "metadata.finalizers",
                "Forbidden: no new finalizers can be added if the object is being deleted, "
                f"found new finalizers []string{{{listed}}}",
            )
    if spec.custom and _generation_part(spec, result) != _generation_part(spec, old):
        result["metadata"]["generation"] = old_meta.get("generation", 0) + 1
    return result


def uid_mismatch(spec: ResourceSpec, name: str, wanted: str, actual: str) -> ApiError:
    why = f"Precondition failed: UID in precondition: {wanted}, UID in object meta: {actual}"
    return conflict(spec, name, why)


def now() -> str:
    """A timestamp the way the API writes them: RFC 3339, whole seconds, UTC `Z`."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _set_or_drop(target: JsonObject, field: str, source: JsonObject) -> None:
    if field in source:
        target[field] = copy.deepcopy(source[field])
    else:
        target.pop(field, None)


def _generation_part(spec: ResourceSpec, obj: JsonObject) -> JsonObject:
    """Any change outside metadata (and outside a status subresource's status) bumps a custom
    resource's generation: the rule of the CRD update strategy."""
    skipped = ("metadata", "status") if spec.status_subresource else ("metadata",)
    return {k: v for k, v in obj.items() if k not in skipped}


def _check_type(spec: ResourceSpec, body: JsonObject, *, required: bool) -> None:
    kind, api_version = body.get("kind"), body.get("apiVersion")
    if required and (not kind or not api_version):
        missing = "Kind" if not kind else "Version"
        raise bad_request(f"Object '{missing}' is missing in '{json.dumps(body)[:200]}'")
    if kind not in (None, "", spec.kind) or api_version not in (None, "", spec.api_version):
        raise bad_request(
            f"the API version in the data ({api_version}) or the kind ({kind}) does not match "
            f"the expected {spec.api_version}, Kind={spec.kind}"
        )


def _check_name(spec: ResourceSpec, name: Any) -> None:
    if not isinstance(name, str) or len(name) > 253 or not _NAME.match(name):
        raise invalid(
            spec,
            str(name),
            "metadata.name",
            f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of lower case '
            "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric "
            "character",
        )
