"""JSON merge patch (RFC 7386) and JSON patch (RFC 6902), as the API server applies them."""

from __future__ import annotations

import copy
from typing import Any


class PatchFormatError(ValueError):
    """The patch document itself is malformed: the server answers 400 BadRequest."""


class PatchApplyError(ValueError):
    """The patch is well formed but does not apply to the object: 422 (Invalid)."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, `null` deletes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(document: Any, operations: Any) -> Any:
    """RFC 6902 on a copy of `document`; ops are add, remove, replace, move, copy and test."""
    if not isinstance(operations, list):
        kind = type(operations).__name__
        raise PatchFormatError(
            f"json: cannot unmarshal {_go_kind(kind)} into Go value of type jsonpatch.Patch"
        )
    doc = copy.deepcopy(document)
    for operation in operations:
        if not isinstance(operation, dict) or not isinstance(operation.get("op"), str):
            raise PatchFormatError(f"invalid JSON patch operation: {operation!r}")
        doc = _apply_one(doc, operation)
    return doc


def _apply_one(doc: Any, operation: dict[str, Any]) -> Any:
    op = operation["op"]
    path = _pointer(operation, "path")
    if op == "add":
        return _add(doc, path, copy.deepcopy(_value(operation)))
    if op == "remove":
        _get(doc, path)
        return _remove(doc, path)
    if op == "replace":
        _get(doc, path)
        return _add(_remove(doc, path), path, copy.deepcopy(_value(operation)))
    if op == "move":
        source = _pointer(operation, "from")
        if path[: len(source)] == source and len(path) > len(source):
            raise PatchApplyError("cannot move a value into one of its own children")
        value = _get(doc, source)
        return _add(_remove(doc, source), path, value)
    if op == "copy":
        return _add(doc, path, copy.deepcopy(_get(doc, _pointer(operation, "from"))))
    if op == "test":
        if _get(doc, path) != _value(operation):
            raise PatchApplyError(f"testing value {operation.get('path')} failed")
        return doc
    raise PatchFormatError(f"Unexpected kind: {op}")


def _value(operation: dict[str, Any]) -> Any:
    if "value" not in operation:
        raise PatchFormatError(f"missing value in {operation['op']} operation")
    return operation["value"]


def _pointer(operation: dict[str, Any], field: str) -> list[str]:
    text = operation.get(field)
    if not isinstance(text, str) or (text and not text.startswith("/")):
        raise PatchFormatError(f"invalid JSON pointer in {field}: {text!r}")
    if text == "":
        return []
    return [part.replace("~1", "/").replace("~0", "~") for part in text[1:].split("/")]


def _index(container: list[Any], token: str, *, allow_end: bool) -> int:
    if allow_end and token == "-":
        return len(container)
    if not token.isdigit() or (token != "0" and token.startswith("0")):
        raise PatchApplyError(f"invalid array index: {token!r}")
    index = int(token)
    if index > len(container) or (index == len(container) and not allow_end):
        raise PatchApplyError(f"array index out of bounds: {index}")
    return index


def _get(doc: Any, path: list[str]) -> Any:
    node = doc
    for token in path:
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token, allow_end=False)]
        else:
            raise PatchApplyError(f"path /{'/'.join(path)} does not exist")
    return node


def _add(doc: Any, path: list[str], value: Any) -> Any:
    if not path:
        return value
    parent = _get(doc, path[:-1])
    token = path[-1]
    if isinstance(parent, dict):
        parent[token] = value
    elif isinstance(parent, list):
        index = _index(parent, token, allow_end=True)
        parent.insert(index, value)
    else:
        raise PatchApplyError(f"cannot add to a scalar at /{'/'.join(path)}")
    return doc


def _remove(doc: Any, path: list[str]) -> Any:
    if not path:
        return None
    parent = _get(doc, path[:-1])
    token = path[-1]
    if isinstance(parent, dict):
        if token not in parent:
            raise PatchApplyError(f"unable to remove nonexistent key: {token}")
        del parent[token]
    elif isinstance(parent, list):
        del parent[_index(parent, token, allow_end=False)]
    else:
        raise PatchApplyError(f"cannot remove from a scalar at /{'/'.join(path)}")
    return doc


def _go_kind(python_kind: str) -> str:
    return {"dict": "object", "str": "string", "int": "number", "float": "number"}.get(
        python_kind, python_kind
    )
