"""Our CRDs' schemas checked offline: as JSON Schema, as Kubernetes' structural-schema rules, and
their CEL rules evaluated with cel-python.

What the API server does that this does not: defaulting, `x-kubernetes-list-type` uniqueness,
`format` checks, and CEL's Kubernetes libraries (quantity, url, ...), which our rules avoid so
that every rule here can be evaluated.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import celpy
import jsonschema
from celpy.adapter import json_to_cel

from tests.manifests.tools import DAEMONSET, load_yaml

JsonSchema = dict[str, Any]

# Keys a schema inside anyOf/allOf/oneOf/not may not carry (structural schemas).
_NOT_IN_JUNCTORS = {"type", "description", "default", "additionalProperties", "nullable"}


def crds() -> dict[str, dict[str, Any]]:
    """Kind -> CRD, from daemonset/crds/."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted((DAEMONSET / "crds").glob("*.yaml")):
        for doc in load_yaml(path):
            if doc["kind"] == "CustomResourceDefinition":
                found[doc["spec"]["names"]["kind"]] = doc
    return found


def served_schema(crd: dict[str, Any]) -> JsonSchema:
    (version,) = [v for v in crd["spec"]["versions"] if v["storage"]]
    schema: JsonSchema = version["schema"]["openAPIV3Schema"]
    return schema


def as_json_schema(node: JsonSchema, *, root: bool = True) -> JsonSchema:
    """The JSON Schema that accepts what the API server keeps: an object with declared properties
    and no x-kubernetes-preserve-unknown-fields gets additionalProperties: false, because the
    server would prune (silently drop) any other field. A test that validates what the coordinator
    writes against this catches status fields that would never reach the cluster."""
    out: JsonSchema = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {
                name: (
                    {"type": "object"}  # metadata is the server's, whatever the CRD says
                    if root and name == "metadata"
                    else as_json_schema(child, root=False)
                )
                for name, child in value.items()
            }
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = as_json_schema(value, root=False)
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [as_json_schema(child, root=False) for child in value]
        elif not key.startswith("x-kubernetes-") and key != "nullable":
            out[key] = value
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def schema_errors(crd: dict[str, Any], obj: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(as_json_schema(served_schema(crd)))
    return [
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator.iter_errors(obj)
    ]


def structural_errors(node: JsonSchema, path: str = "", in_junctor: bool = False) -> list[str]:
    """Kubernetes' structural-schema rules that a typo breaks most often (the API server refuses
    a CRD that breaks them)."""
    errors: list[str] = []
    loose = node.get("x-kubernetes-int-or-string") or node.get(
        "x-kubernetes-preserve-unknown-fields"
    )
    if in_junctor:
        errors += [
            f"{path}: {k} inside anyOf/allOf/oneOf/not" for k in _NOT_IN_JUNCTORS & set(node)
        ]
    elif "type" not in node and not loose:
        errors.append(f"{path}: no type")
    if node.get("x-kubernetes-int-or-string") and node.get("anyOf") != [
        {"type": "integer"},
        {"type": "string"},
    ]:
        errors.append(f"{path}: int-or-string needs anyOf [integer, string]")
    if "properties" in node and "additionalProperties" in node:
        errors.append(f"{path}: both properties and additionalProperties")
    if node.get("type") == "array" and "items" not in node:
        errors.append(f"{path}: array without items")
    if node.get("x-kubernetes-list-type") == "map":
        keys = node.get("x-kubernetes-list-map-keys") or []
        required = set(node.get("items", {}).get("required", []))
        if not keys or not set(keys) <= required:
            errors.append(f"{path}: list-type map needs list-map-keys that items require")
    for name, child in node.get("properties", {}).items():
        errors += structural_errors(child, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            errors += structural_errors(node[key], f"{path}.{key}")
    for key in ("anyOf", "allOf", "oneOf"):
        if key == "anyOf" and node.get("x-kubernetes-int-or-string"):
            continue  # the one anyOf with types that Kubernetes allows (checked above)
        for index, child in enumerate(node.get(key, [])):
            errors += structural_errors(child, f"{path}.{key}[{index}]", in_junctor=True)
    if isinstance(node.get("not"), dict):
        errors += structural_errors(node["not"], f"{path}.not", in_junctor=True)
    return errors


def rules(node: JsonSchema, path: str = "") -> Iterator[tuple[str, dict[str, str]]]:
    """Every x-kubernetes-validations rule with the schema path it sits at."""
    for rule in node.get("x-kubernetes-validations", []):
        yield path, rule
    for name, child in node.get("properties", {}).items():
        yield from rules(child, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            yield from rules(node[key], f"{path}.{key}")


def compile_rule(rule: str) -> celpy.Runner:
    env = celpy.Environment()
    return env.program(env.compile(rule))


def cel_errors(node: JsonSchema, new: Any, old: Any = None, path: str = "") -> list[str]:
    """Evaluate the CEL rules of `node` and below against `new` as the API server would on a
    create (`old` None: rules that use oldSelf are skipped) or an update."""
    errors: list[str] = []
    for rule in node.get("x-kubernetes-validations", []):
        transition = "oldSelf" in rule["rule"]
        if transition and old is None:
            continue
        activation = {"self": json_to_cel(new)}
        if transition:
            activation["oldSelf"] = json_to_cel(old)
        if not compile_rule(rule["rule"]).evaluate(activation):
            errors.append(f"{path or '<root>'}: {rule['message']}")
    if isinstance(new, dict):
        for name, child in node.get("properties", {}).items():
            if name in new:
                previous = old.get(name) if isinstance(old, dict) else None
                errors += cel_errors(child, new[name], previous, f"{path}.{name}")
        if isinstance(node.get("additionalProperties"), dict):
            for name, value in new.items():
                previous = old.get(name) if isinstance(old, dict) else None
                errors += cel_errors(
                    node["additionalProperties"], value, previous, f"{path}.{name}"
                )
    if isinstance(new, list) and isinstance(node.get("items"), dict):
        for index, value in enumerate(new):  # correlating list items by index is enough here
            errors += cel_errors(node["items"], value, None, f"{path}[{index}]")
    return errors


def admission_errors(
    crd: dict[str, Any], obj: dict[str, Any], old: dict[str, Any] | None = None
) -> list[str]:
    """What the API server would refuse in `obj` (as far as offline checks can tell)."""
    return schema_errors(crd, obj) + cel_errors(served_schema(crd), obj, old)
