"""The columns `modelcache get` prints for each object type, laid out the way kubectl lays them out.

Pure functions of the objects and the current time, so what a user sees is easy to test.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Final

from modelcache.contract.objects import CACHE_KIND, NODE_GROUP_KIND, NODE_KIND, JsonObject

GAP: Final = "   "  # kubectl's tabwriter pads columns with three spaces
NONE: Final = "<none>"
UNKNOWN: Final = "<unknown>"


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in (headers, *rows)) for i in range(len(headers))]
    lines = (
        GAP.join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (headers, *rows)
    )
    return "".join(line + "\n" for line in lines)


def table_rows(
    kind: str, items: Sequence[JsonObject], now: datetime
) -> tuple[tuple[str, ...], list[list[str]]]:
    headers, row = _TABLES[kind]
    return headers, [row(item, now) for item in items]


def age(created: object, now: datetime) -> str:
    """kubectl's short age (``ShortHumanDuration``): 45s, 12m, 3h, 5d, 2y."""
    if not isinstance(created, str) or not created:
        return UNKNOWN
    try:
        seconds = int(
            (now - datetime.fromisoformat(created.replace("Z", "+00:00"))).total_seconds()
        )
    except (TypeError, ValueError):
        return UNKNOWN
    if seconds < -1:
        return "<invalid>"
    seconds = max(seconds, 0)
    for limit, unit, size in ((60, "s", 1), (3600, "m", 60), (86400, "h", 3600)):
        if seconds < limit:
            return f"{seconds // size}{unit}"
    days = seconds // 86400
    return f"{days}d" if days < 365 else f"{days // 365}y"


def human_bytes(count: object) -> str:
    """Compact binary size for a table cell: ``512``, ``1.5Gi``, ``100Gi``."""
    if isinstance(count, bool) or not isinstance(count, int | float):
        return UNKNOWN
    value = float(count)
    for unit in ("", "Ki", "Mi", "Gi", "Ti", "Pi"):
        if abs(value) < 1024 or unit == "Pi":
            text = f"{value:.1f}".removesuffix(".0") if unit else f"{value:.0f}"
            return text + unit
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _section(obj: JsonObject, key: str) -> dict[str, Any]:
    value = obj.get(key)
    return value if isinstance(value, dict) else {}


def _text(value: object) -> str:
    return NONE if value is None or value == "" else str(value)


def _cache_row(obj: JsonObject, now: datetime) -> list[str]:
    spec, status = _section(obj, "spec"), _section(obj, "status")
    copies = status.get("copies") or {}
    per_group = status.get("nodeGroupStatus") or {}
    groups = [
        *(spec.get("nodeGroups") or ()),
        *sorted(set(per_group) - set(spec.get("nodeGroups") or ())),
    ]
    cells = []
    for group in groups:
        state = per_group.get(group)
        if not isinstance(state, dict):
            cells.append(f"{group}:{UNKNOWN}")
        elif state.get("admitted"):
            cells.append(f"{group}:{state.get('available', 0)}/{state.get('nodes', 0)}")
        else:
            cells.append(f"{group}:refused")
    return [
        _text(_section(obj, "metadata").get("name")),
        f"{copies.get('available', 0)}/{copies.get('total', 0)}",
        ",".join(cells) or NONE,
        _text(spec.get("modelSize")),
        age(_section(obj, "metadata").get("creationTimestamp"), now),
    ]


def _group_row(obj: JsonObject, now: datetime) -> list[str]:
    status = _section(obj, "status")
    nodes = status.get("nodes")
    return [
        _text(_section(obj, "metadata").get("name")),
        _text(_section(obj, "spec").get("storageLimit")),
        _text(status.get("used")),
        _text(status.get("available")),
        str(len(nodes)) if isinstance(nodes, list) else UNKNOWN,
        age(_section(obj, "metadata").get("creationTimestamp"), now),
    ]


def _node_row(obj: JsonObject, now: datetime) -> list[str]:
    status = _section(obj, "status")
    ready = status.get("ready")
    models = _section(status, "modelStatus")
    downloaded = sum(state == "ModelDownloaded" for state in models.values())
    return [
        _text(_section(obj, "metadata").get("name")),
        UNKNOWN if ready is None else str(bool(ready)),
        f"{downloaded}/{len(models)}",
        human_bytes(_section(status, "disk").get("freeBytes")),
    ]


_TABLES: Final[dict[str, tuple[tuple[str, ...], Callable[[JsonObject, datetime], list[str]]]]] = {
    CACHE_KIND: (("NAME", "READY", "GROUPS", "SIZE", "AGE"), _cache_row),
    NODE_GROUP_KIND: (
        ("NAME", "STORAGE-LIMIT", "USED", "AVAILABLE", "NODES", "AGE"),
        _group_row,
    ),
    NODE_KIND: (("NAME", "READY", "MODELS", "DISK-FREE"), _node_row),
}
