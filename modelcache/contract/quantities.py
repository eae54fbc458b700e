"""Sizes and rates as people and Kubernetes write them: ``10Gi``, ``500M``, ``64MiB``, ``1G/s``."""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation, localcontext

from modelcache.contract.errors import UsageError

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "P": Decimal(10**15),
    "E": Decimal(10**18),
}
# Kubernetes' quantity grammar: a signed decimal number, then a binary suffix, a decimal suffix,
# or a decimal exponent ("1e3").
_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d+)?$")


def parse_quantity(text: str) -> Decimal:
    """Parse a Kubernetes resource quantity exactly (no float rounding)."""
    match = _QUANTITY.match(text.strip())
    if match is None:
        raise UsageError(
            f"{text!r} is not a quantity: write a number with an optional suffix, "
            "e.g. 10Gi, 500M, 1.5Ti or 1e9"
        )
    number, suffix = match.group(1), match.group(2) or ""
    try:
        value = Decimal(number)
    except InvalidOperation as e:  # pragma: no cover - the regex admits only decimals
        raise UsageError(f"{text!r} is not a quantity") from e
    with localcontext() as context:
        context.prec = 80  # the default 28 digits would round large byte counts
        if suffix in _BINARY:
            return value * _BINARY[suffix]
        if suffix in _DECIMAL:
            return value * _DECIMAL[suffix]
        return value * Decimal(10) ** int(suffix[1:])


def parse_bytes(text: str, *, what: str = "size") -> int:
    """A byte count: a quantity, optionally with a trailing ``B`` (``64MiB``, ``2GB``, ``512``).

    Fractions of a byte round up, as Kubernetes' ``Quantity.Value()`` does.
    """
    cleaned = text.strip()
    if cleaned.endswith("B"):  # "64MiB" -> "64Mi", "2GB" -> "2G", "512B" -> "512"
        cleaned = cleaned[:-1]
    try:
        value = parse_quantity(cleaned)
    except UsageError as e:
        raise UsageError(f"{what} {text!r} is not a byte size: write e.g. 64Mi, 64MiB or 2G") from e
    if value < 0:
        raise UsageError(f"{what} {text!r} is negative")
    return math.ceil(value)


def parse_rate(text: str, *, what: str = "rate") -> int:
    """Bytes per second: a byte size with an optional ``/s`` (``100MB/s``, ``50Mi``)."""
    cleaned = text.strip()
    if cleaned.endswith("/s"):
        cleaned = cleaned[:-2]
    return parse_bytes(cleaned, what=what)


def format_bytes(count: float) -> str:
    """Human-readable binary size for messages and progress lines: ``1.5 GiB``."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover
