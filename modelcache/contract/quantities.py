"""Sizes and rates as people and Kubernetes write them: ``10Gi``, ``500M``, ``64MiB``, ``1G/s``.

Kubernetes stores a quantity as a number plus a format and prints it in its own canonical way
("1024Mi" comes back as "1Gi"); :func:`canonical_quantity` predicts that, so what we write into an
object and what the API server hands back compare equal instead of looking like a change. The rules
follow ``k8s.io/apimachinery/pkg/api/resource`` (``ParseQuantity``, ``CanonicalizeBytes``,
``AsCanonicalBytes``, ``AsCanonicalBase1024Bytes``), including its quirks.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation, localcontext
from typing import Literal, NamedTuple

from modelcache.contract.errors import UsageError

QuantityFormat = Literal["BinarySI", "DecimalSI", "DecimalExponent"]

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
_QUANTITY = re.compile(
    r"^(?P<sign>[+-]?)(?=\.?\d)(?P<whole>\d*)(?:\.(?P<fraction>\d*))?"
    r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d+)?$"
)


class _Written(NamedTuple):
    """A quantity string taken apart: ``-012.50Mi`` is ``("-", "012", "50", "Mi")``."""

    sign: str
    whole: str
    fraction: str
    suffix: str

    @property
    def number(self) -> str:
        return f"{self.sign}{self.whole}.{self.fraction}"


def _split(text: str) -> _Written:
    match = _QUANTITY.match(text.strip())
    if match is None:
        raise UsageError(
            f"{text!r} is not a quantity: write a number with an optional suffix, "
            "e.g. 10Gi, 500M, 1.5Ti or 1e9"
        )
    return _Written(match["sign"], match["whole"], match["fraction"] or "", match["suffix"] or "")


def parse_quantity(text: str) -> Decimal:
    """Parse a Kubernetes resource quantity exactly (no float rounding)."""
    written = _split(text)
    number, suffix = written.number, written.suffix
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


# How Kubernetes prints a quantity back (apimachinery's CanonicalizeBytes): the mantissa is a whole
# number and the suffix as large as it can be without losing precision.
_BINARY_SUFFIXES = ("", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei")  # index = power of 1024
_SI_EXPONENTS = {
    "n": -9,
    "u": -6,
    "m": -3,
    "": 0,
    "k": 3,
    "M": 6,
    "G": 9,
    "T": 12,
    "P": 15,
    "E": 18,
}
_SI_SUFFIXES = {exponent: suffix for suffix, exponent in _SI_EXPONENTS.items()}
_MAX_INT64 = 2**63 - 1  # Kubernetes caps BinarySI quantities here when it parses them
_NANO = -9  # Kubernetes rounds every quantity away from zero to a whole number of nano-units


def quantity_format_of(text: str) -> QuantityFormat:
    """The format Kubernetes remembers for a quantity string, and prints it back in.

    A binary suffix (``Ki`` .. ``Ei``) gives BinarySI, an exponent (``1e3``, ``1E-3``)
    DecimalExponent, anything else DecimalSI. Like ``ParseQuantity``, a BinarySI value strictly
    between -1 and 1 (and not zero) becomes DecimalSI; either way it prints in decimal form.
    """
    written = _split(text)
    if written.suffix in _BINARY:
        mantissa, exponent = _nano_rounded(parse_quantity(text))
        below_one = mantissa != 0 and exponent < 0 and abs(mantissa) < 10**-exponent
        return "DecimalSI" if below_one else "BinarySI"
    if written.suffix[:1] in ("e", "E") and written.suffix != "E":
        return "DecimalExponent"
    return "DecimalSI"


def format_quantity(value: Decimal | int, fmt: QuantityFormat) -> str:
    """What Kubernetes prints for a quantity of ``value`` in format ``fmt``.

    The value is first held as the API server holds a parsed quantity: rounded away from zero
    to a whole number of nano-units (``0.1n`` -> ``1n``), and for BinarySI capped at
    ±(2**63 - 1). It then prints in canonical form (``Quantity.String()``):

    - zero is ``0``;
    - BinarySI: a whole number of at least 1024 in magnitude prints as ``<integer><Ki..Ei>``
      with the largest power of 1024 that divides it (``1536Mi``, ``1025``); anything else
      (below 1024, or with a fraction) prints as DecimalSI;
    - DecimalSI and DecimalExponent: the trailing zeros of the mantissa go into the exponent,
      which is then lowered to a multiple of 3 (``1.5`` -> ``1500m``, ``12e8`` -> ``1200e6``);
      DecimalExponent writes it as ``e<exponent>`` (none for 0), DecimalSI as n, u, m, k, M, G,
      T, P, E. Kubernetes has no SI suffix above E, and prints the bare mantissa there:
      ``1000E`` comes back as ``1``. We do the same, since that is what a cluster shows.
    """
    number = Decimal(value)
    if not number.is_finite():
        raise ValueError(f"a quantity must be a finite number, got {value!r}")
    if fmt == "BinarySI" and abs(number) > _MAX_INT64:
        number = Decimal(_MAX_INT64).copy_sign(number)
    mantissa, exponent = _nano_rounded(number)
    if mantissa == 0:
        return "0"
    while mantissa % 10 == 0:
        mantissa //= 10
        exponent += 1
    if fmt == "BinarySI" and exponent >= 0 and abs(mantissa) * 10**exponent >= 1024:
        # A whole number: with no factor of 10 left in the mantissa, exponent < 0 is a fraction.
        whole, power = mantissa * 10**exponent, 0
        while whole % 1024 == 0:
            whole //= 1024
            power += 1
        return f"{whole}{_BINARY_SUFFIXES[power]}"
    lowered = exponent - exponent % 3
    mantissa *= 10 ** (exponent - lowered)
    if fmt == "DecimalExponent":
        return f"{mantissa}e{lowered}" if lowered else str(mantissa)
    return f"{mantissa}{_SI_SUFFIXES.get(lowered, '')}"


def canonical_quantity(text: str) -> str:
    """What Kubernetes shows (``kubectl get -o yaml``) for a quantity a user wrote as ``text``.

    Normally ``format_quantity(parse_quantity(text), quantity_format_of(text))``. But
    ``ParseQuantity`` keeps the user's own string when a cheap check says it is already
    canonical (see :func:`_kept_as_written`), and that check lets through a few strings that
    are not: ``+10Gi``, ``010Gi``, ``1E3``, ``1.500k`` all come back unchanged.
    """
    written = _split(text)
    if _kept_as_written(written):
        return text.strip()
    return format_quantity(parse_quantity(text), quantity_format_of(text))


def _nano_rounded(value: Decimal) -> tuple[int, int]:
    """``(mantissa, exponent)`` with ``mantissa * 10**exponent`` = ``value`` rounded away from zero
    to a whole number of nano-units, and ``exponent >= -9``."""
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite
    magnitude = int("".join(map(str, digits)))
    if exponent < _NANO and magnitude:
        dropped = _NANO - exponent
        if dropped > len(digits):  # below one nano-unit: a whole one
            magnitude = 1
        else:
            kept, rest = divmod(magnitude, 10**dropped)
            magnitude = kept + (rest > 0)
        exponent = _NANO
    return (-magnitude if sign else magnitude), exponent


def _kept_as_written(written: _Written) -> bool:
    """Whether ``ParseQuantity`` keeps the string as written instead of printing it anew.

    It does so only on its int64 fast path, when the digits are few enough to fit, and then only
    if the string looks canonical: for a binary suffix a whole mantissa that is not a multiple of
    8; otherwise an exponent that is a multiple of 3 (after the fraction digits are moved into the
    mantissa), a mantissa not ending in 000, and not starting with 0. Sign and leading zeros are
    not looked at, so they survive.
    """
    whole = written.whole.lstrip("0") or "0"
    digits = whole + written.fraction
    if written.suffix in _BINARY:
        power = _BINARY_SUFFIXES.index(written.suffix)
        # The fast path takes whole mantissas with at most 14 - 3*power digits: Ki..Ti only.
        return not written.fraction and len(whole) <= 14 - 3 * power and int(whole) % 8 != 0
    if written.suffix in _SI_EXPONENTS:
        exponent = _SI_EXPONENTS[written.suffix]
    else:
        exponent = int(written.suffix[1:])
    scale = exponent - len(written.fraction)
    return (
        len(digits) <= 18  # digits an int64 surely holds
        and scale >= _NANO
        and scale % 3 == 0
        and not digits.endswith("000")
        and not digits.startswith("0")
    )


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
