"""`modelcache apply -f FILE`: create or update caches and node groups from YAML, like kubectl.

Every document is read and checked before the first request, so a typo in the last document of a
file changes nothing. Node groups go first, so a cache naming a group from the same file is
admitted at once instead of waiting for the group.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from modelcache.cli.objects_command import (
    CACHES,
    EXIT_FAILED,
    EXIT_OK,
    NODE_GROUPS,
    Resource,
    add_coordinator_flag,
    coordinator_client,
    coordinator_endpoint,
)
from modelcache.contract.errors import UsageError
from modelcache.contract.objects import FieldError, JsonObject, check_name

if TYPE_CHECKING:
    import yaml  # imported where it is used: `modelcache pull` loads this module, not YAML

APPLY_ORDER: Final = (NODE_GROUPS, CACHES)
KINDS: Final = {r.kind: r for r in APPLY_ORDER}
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Manifest:
    resource: Resource
    name: str
    body: JsonObject
    where: str  # "FILE: document N", for messages


def add_apply_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "apply",
        help="create or update caches and node groups from YAML files",
        description=(
            "Create or update the LocalModelCaches and LocalModelNodeGroups in multi-document "
            "YAML (or JSON) files, node groups first. Nothing is sent if any document is invalid."
        ),
    )
    p.add_argument(
        "-f",
        "--filename",
        dest="files",
        action="append",
        required=True,
        metavar="FILE",
        help="YAML file to apply, '-' for standard input (repeatable)",
    )
    add_coordinator_flag(p)
    p.set_defaults(run=run_apply)


async def run_apply(args: argparse.Namespace) -> int:
    endpoint = coordinator_endpoint(args, os.environ)
    # A daemon thread, not asyncio.to_thread: Ctrl-C while a terminal's stdin is open must not
    # leave the interpreter waiting on a read that never ends.
    sources = await _in_daemon_thread(read_sources, args.files)
    manifests = in_apply_order(parse_manifests(sources))
    if not manifests:
        raise UsageError(f"no objects to apply in {', '.join(args.files)}")
    failed = 0
    async with coordinator_client(endpoint) as client:
        for manifest in manifests:
            ref = manifest.resource.ref(manifest.name)
            reply = await client.call("PUT", manifest.resource.path(manifest.name), manifest.body)
            if not reply.ok:
                print(f"modelcache: error: {ref}: {reply.error()}", file=sys.stderr)
                failed += 1
                continue
            print(f"{ref} {'created' if reply.status == 201 else 'configured'}")
            for refusal in admission_refusals(reply.body):
                print(f"modelcache: warning: {ref}: {refusal}", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


def read_sources(paths: Sequence[str]) -> list[tuple[str, str]]:
    """``(label, text)`` for each `-f`; '-' is standard input, which can be read only once."""
    if list(paths).count("-") > 1:
        raise UsageError("-f - is given twice: standard input can be read only once")
    sources = []
    for path in paths:
        label = "stdin" if path == "-" else path
        try:
            text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise UsageError(f"cannot read {label}: {e.strerror or e}") from e
        except UnicodeDecodeError as e:
            raise UsageError(f"cannot read {label}: not UTF-8 text ({e.reason})") from e
        sources.append((label, text))
    return sources


def parse_manifests(sources: Sequence[tuple[str, str]]) -> list[Manifest]:
    """Every object in every source, checked enough to address it: kind and metadata.name. The
    coordinator checks the rest and names the field at fault."""
    import yaml

    manifests = []
    for label, text in sources:
        index = 0
        try:
            for index, document in enumerate(yaml.safe_load_all(text), start=1):
                if document is not None:  # an empty document, e.g. after a trailing '---'
                    manifests.append(_manifest(document, f"{label}: document {index}"))
        except yaml.YAMLError as e:
            raise UsageError(
                f"{label}: document {index + 1}: invalid YAML: {_yaml_problem(e)}"
            ) from e
    return manifests


def _manifest(document: object, where: str) -> Manifest:
    if not isinstance(document, dict):
        raise UsageError(f"{where}: is a {type(document).__name__}, not an object with a kind")
    kind = document.get("kind")
    resource = KINDS.get(kind) if isinstance(kind, str) else None
    if resource is None:
        given = "has no kind" if kind is None else f"kind {kind!r} cannot be applied"
        raise UsageError(f"{where}: {given}: use LocalModelCache or LocalModelNodeGroup")
    metadata = document.get("metadata")
    try:
        name = check_name(metadata.get("name") if isinstance(metadata, dict) else None)
    except FieldError as e:
        raise UsageError(f"{where} ({kind}): {e}") from e
    return Manifest(resource, name, document, where)


def _yaml_problem(error: yaml.YAMLError) -> str:
    """One line instead of PyYAML's multi-line report."""
    import yaml

    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        return f"{error.problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(error).split())


def in_apply_order(manifests: Sequence[Manifest]) -> list[Manifest]:
    """Node groups before caches; within a kind, file order (later documents win, as in kubectl)."""
    return sorted(manifests, key=lambda m: APPLY_ORDER.index(m.resource))


def admission_refusals(stored: Any) -> list[str]:
    """Why node groups did not admit a just-applied cache (the `Admitted-GROUP` conditions)."""
    status = stored.get("status") if isinstance(stored, dict) else None
    if not isinstance(status, dict):
        return []
    per_group = status.get("nodeGroupStatus") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or () if isinstance(c, dict)}
    return [
        str(conditions.get(f"Admitted-{group}", {}).get("message") or f"not admitted to {group}")
        for group, state in per_group.items()
        if isinstance(state, dict) and state.get("admitted") is False
    ]


async def _in_daemon_thread(work: Callable[..., T], *args: Any) -> T:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not done.done():
            outcome()

    def run() -> None:
        try:
            result = work(*args)
        except Exception as e:  # noqa: BLE001 - handed to the awaiting coroutine, not swallowed
            outcome = functools.partial(done.set_exception, e)
        else:
            outcome = functools.partial(done.set_result, result)
        with contextlib.suppress(RuntimeError):  # the loop is gone: the command was interrupted
            loop.call_soon_threadsafe(settle, outcome)

    threading.Thread(target=run, name="modelcache-read-manifests", daemon=True).start()
    return await done
