from __future__ import annotations

from decimal import ROUND_UP, Decimal, localcontext

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from modelcache.contract.errors import UsageError
from modelcache.contract.quantities import (
    QuantityFormat,
    canonical_quantity,
    format_bytes,
    format_quantity,
    parse_bytes,
    parse_quantity,
    parse_rate,
    quantity_format_of,
)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("10Gi", 10 * 2**30),
        ("500M", 500 * 10**6),
        ("1.5Ti", int(1.5 * 2**40)),
        ("1e9", 10**9),
        ("64MiB", 64 * 2**20),
        ("2GB", 2 * 10**9),
        ("512", 512),
        ("512B", 512),
        ("1k", 1000),
        ("1Ki", 1024),
        ("0.5", 1),  # fractions of a byte round up, as Kubernetes' Value()
    ],
)
def test_parse_bytes(text: str, value: int) -> None:
    assert parse_bytes(text) == value


def test_parse_quantity_is_exact() -> None:
    assert parse_quantity("100m") == Decimal("0.1")
    assert parse_quantity("1E") == Decimal(10**18)
    assert parse_quantity("1Ei") == Decimal(2**60)


@pytest.mark.parametrize("text", ["", "Gi", "10 Gi", "10GiB/s", "ten", "1.2.3", "10Zi"])
def test_bad_sizes_are_refused(text: str) -> None:
    with pytest.raises(UsageError):
        parse_bytes(text)


def test_negative_sizes_are_refused() -> None:
    with pytest.raises(UsageError, match="negative"):
        parse_bytes("-1Gi")


def test_rates_accept_per_second() -> None:
    assert parse_rate("100MB/s") == 100 * 10**6
    assert parse_rate("50Mi") == 50 * 2**20


@given(st.integers(min_value=0, max_value=2**62), st.sampled_from(["", "Ki", "Mi", "Gi", "Ti"]))
def test_binary_suffixes_scale_exactly(n: int, suffix: str) -> None:
    scale = {"": 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}[suffix]
    assert parse_bytes(f"{n}{suffix}") == n * scale


def test_format_bytes() -> None:
    assert format_bytes(0) == "0 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(10 * 2**30) == "10.0 GiB"


# --- Printing quantities as Kubernetes does ---------------------------------------------------
# Expected strings marked "Go:" come from apimachinery's pkg/api/resource/quantity_test.go
# (the test named after the colon); the others are the rules as documented in quantities.py,
# each checked against ParseQuantity + String() from apimachinery built from source.

BINARY: QuantityFormat = "BinarySI"
SI: QuantityFormat = "DecimalSI"
EXP: QuantityFormat = "DecimalExponent"


def _d(mantissa: int, exponent: int) -> Decimal:
    """Go's decQuantity(mantissa, exponent, ...): mantissa * 10**exponent, exactly."""
    return Decimal(mantissa).scaleb(exponent)


# Go: TestQuantityString (value, format, String()); the negated value prints with a "-".
QUANTITY_STRING = [
    (_d(1024 * 1024 * 1024, 0), BINARY, "1Gi"),
    (_d(300 * 1024 * 1024, 0), BINARY, "300Mi"),
    (_d(6 * 1024, 0), BINARY, "6Ki"),
    (_d(1001 * 1024 * 1024 * 1024, 0), BINARY, "1001Gi"),
    (_d(1024 * 1024 * 1024 * 1024, 0), BINARY, "1Ti"),
    (_d(5, 0), BINARY, "5"),
    (_d(500, -3), BINARY, "500m"),
    (_d(1, 9), SI, "1G"),
    (_d(1000, 6), SI, "1G"),
    (_d(1000000, 3), SI, "1G"),
    (_d(1000000000, 0), SI, "1G"),
    (_d(1, -3), SI, "1m"),
    (_d(80, -3), SI, "80m"),
    (_d(1080, -3), SI, "1080m"),
    (_d(108, -2), SI, "1080m"),
    (_d(10800, -4), SI, "1080m"),
    (_d(300, 6), SI, "300M"),
    (_d(1, 12), SI, "1T"),
    (_d(1234567, 6), SI, "1234567M"),
    (_d(1234567, -3), BINARY, "1234567m"),
    (_d(3, 3), SI, "3k"),
    (_d(1025, 0), BINARY, "1025"),
    (_d(1, 9), EXP, "1e9"),
    (_d(1, -3), EXP, "1e-3"),
    (_d(1, -9), EXP, "1e-9"),
    (_d(80, -3), EXP, "80e-3"),
    (_d(300, 6), EXP, "300e6"),
    (_d(1, 12), EXP, "1e12"),
    (_d(1, 3), EXP, "1e3"),
    (_d(3, 3), EXP, "3e3"),
    (_d(1, -9), SI, "1n"),
    (_d(80, -9), SI, "80n"),
    (_d(1080, -9), SI, "1080n"),
    (_d(108, -8), SI, "1080n"),
    (_d(10800, -10), SI, "1080n"),
    (_d(1, -6), SI, "1u"),
    (_d(80, -6), SI, "80u"),
    (_d(1080, -6), SI, "1080u"),
]


@pytest.mark.parametrize(
    ("value", "fmt", "expected"),
    [
        *QUANTITY_STRING,
        (0, SI, "0"),  # Go: TestQuantityString
        (0, BINARY, "0"),
        (0, EXP, "0"),
        # Go: TestNewSet
        (1, SI, "1"),
        (1000, SI, "1k"),
        (1234000, SI, "1234k"),
        (1024, BINARY, "1Ki"),
        (1024 * 1024, BINARY, "1Mi"),
        # Go: TestMilliNewSet (NewMilliQuantity: value / 1000)
        (_d(1, -3), SI, "1m"),
        (_d(1234000, -3), SI, "1234"),
        (_d(1024, -3), BINARY, "1024m"),
        (_d(1024 * 1024, -3), BINARY, "1048576m"),
        # Go: TestNewScaledSet
        (_d(1000, -9), SI, "1u"),
        (_d(1000, -6), SI, "1m"),
        (_d(1000, -3), SI, "1"),
        # The rules, with the sizes modelcache prints.
        (2**30, BINARY, "1Gi"),
        (1536 * 2**20, BINARY, "1536Mi"),
        (10 * 2**30, BINARY, "10Gi"),
        (512, BINARY, "512"),
        (1000, BINARY, "1k"),  # below 1024 a BinarySI value prints as DecimalSI
        (1023, BINARY, "1023"),
        (1000 * 1024, BINARY, "1000Ki"),
        (Decimal("1536.5"), BINARY, "1536500m"),  # a fraction: DecimalSI, not rounded up
        (1500000, SI, "1500k"),
        (Decimal("0.5"), SI, "500m"),
        (10**9, SI, "1G"),
        (12 * 10**8, EXP, "1200e6"),
        (10**100, EXP, "10e99"),
        # Finer than a nano-unit rounds away from zero to a whole one, as ParseQuantity does.
        (Decimal("0.0000000001"), SI, "1n"),
        (Decimal("3.001e-9"), SI, "4n"),
        (Decimal("-3.001e-9"), SI, "-4n"),
        (Decimal("1e-30"), EXP, "1e-9"),
        (Decimal("0.00000012345"), SI, "124n"),
        # Go quirks: BinarySI is capped at 2**63 - 1, and DecimalSI has no suffix above E.
        (2**63, BINARY, "9223372036854775807"),
        (-(2**70), BINARY, "-9223372036854775807"),
        (999 * 10**18, SI, "999E"),
        (10**21, SI, "1"),
        (-(10**24), SI, "-1"),
    ],
)
def test_format_quantity(value: Decimal | int, fmt: QuantityFormat, expected: str) -> None:
    assert format_quantity(value, fmt) == expected


@pytest.mark.parametrize(("value", "fmt", "expected"), QUANTITY_STRING)
def test_format_quantity_negative(value: Decimal, fmt: QuantityFormat, expected: str) -> None:
    assert format_quantity(-value, fmt) == f"-{expected}"


@pytest.mark.parametrize("value", [Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity")])
def test_format_quantity_refuses_non_numbers(value: Decimal) -> None:
    with pytest.raises(ValueError, match="finite"):
        format_quantity(value, SI)


# Go: TestQuantityParseEmit (parse, then String()); the negated string prints with a "-".
PARSE_EMIT = [
    ("1Ki", "1Ki"),
    ("1Mi", "1Mi"),
    ("1Gi", "1Gi"),
    ("1024Mi", "1Gi"),
    ("1000M", "1G"),
    (".001Ki", "1024m"),
    (".000001Ki", "1024u"),
    (".000000001Ki", "1024n"),
    (".000000000001Ki", "2n"),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        *PARSE_EMIT,
        # Go: TestQuantityString, its canonical strings come back unchanged ...
        *((expected, expected) for _, _, expected in QUANTITY_STRING),
        # ... and its alternate spellings come back canonical.
        ("307200Ki", "300Mi"),
        ("1025024Mi", "1001Gi"),
        ("1024Gi", "1Ti"),
        ("5000m", "5"),
        ("0.5", "500m"),
        ("0.001T", "1G"),
        ("1000u", "1m"),
        ("1.08", "1080m"),
        ("1080000000n", "1080m"),
        (".001e12", "1e9"),
        ("0.001e0", "1e-3"),
        ("1000e-12", "1e-9"),
        ("00", "0"),
        # Go: TestParseQuantity (big numbers)
        ("-999999999999999999", "-999999999999999999"),
        ("999999999999999999.1", "999999999999999999100m"),
        ("9999999999999999999", "9999999999999999999"),
        ("1000000000000000000", "1E"),
        ("-1.0E", "-1E"),
        ("9999999999999999999000m", "9999999999999999999"),
        ("-1.0000000000000000001E", "-1000000000000000000100m"),
        ("1.000000000000000001E", "1000000000000000001"),
        ("10000000000000000000", "10E"),
        ("-10000000000000000000000m", "-10E"),
        ("10.000000000000000001E", "10000000000000000001"),
        ("-9223372036854775809.1", "-9223372036854775809100m"),
        ("9223372036854775808000m", "9223372036854775808"),
        # Go: TestJSONWhitespace
        (" 1", "1"),
        ("1 ", "1"),
        (" -1", "-1"),
        # The round trips modelcache cares about.
        ("0.5Gi", "512Mi"),
        ("1.5Gi", "1536Mi"),
        ("10Gi", "10Gi"),
        ("500M", "500M"),
        ("1e9", "1e9"),
        ("12e8", "1200e6"),
        ("1000Ki", "1000Ki"),
        ("8Ki", "8Ki"),
        ("0Gi", "0"),
        ("-0", "0"),
        ("1.1E-9", "2e-9"),
        # Go quirks: ParseQuantity keeps a string that passes its quick "already canonical"
        # check as written, sign, leading zeros, upper-case E and all ...
        ("+10Gi", "+10Gi"),
        ("010Gi", "010Gi"),
        ("1E3", "1E3"),
        ("1e+3", "1e+3"),
        ("1.500k", "1.500k"),
        ("1.k", "1.k"),
        ("+1500k", "+1500k"),
        # ... but not where the quick check does not apply (Pi and Ei never take that path).
        ("+1Pi", "1Pi"),
        ("+1000M", "1G"),
        ("1.5e3", "1500"),
        # BinarySI is capped at 2**63 - 1; DecimalSI above E has no suffix and prints bare.
        ("8Ei", "9223372036854775807"),
        ("-9Ei", "-9223372036854775807"),
        ("1000E", "1"),
    ],
)
def test_canonical_quantity(text: str, expected: str) -> None:
    assert canonical_quantity(text) == expected


@pytest.mark.parametrize(("text", "expected"), PARSE_EMIT)
def test_canonical_quantity_negative(text: str, expected: str) -> None:
    assert canonical_quantity(f"-{text}") == f"-{expected}"


@pytest.mark.parametrize(
    ("text", "fmt"),
    [
        ("10Gi", BINARY),
        ("0.5Gi", BINARY),
        ("0.0001Ki", SI),  # below 1 (not 0) ParseQuantity switches BinarySI to DecimalSI
        ("-0.0001Ki", SI),
        ("0Ki", BINARY),
        ("500M", SI),
        ("1E", SI),
        ("512", SI),
        ("100m", SI),
        ("1e3", EXP),
        ("1E3", EXP),
        ("1.1E-9", EXP),
        ("12e+8", EXP),
    ],
)
def test_quantity_format_of(text: str, fmt: QuantityFormat) -> None:
    assert quantity_format_of(text) == fmt


@pytest.mark.parametrize("text", ["", "Gi", "ten", "1.2.3", "10Zi", "1e"])
def test_quantity_format_of_refuses_non_quantities(text: str) -> None:
    with pytest.raises(UsageError):
        quantity_format_of(text)
    with pytest.raises(UsageError):
        canonical_quantity(text)


NANOS = st.integers(min_value=-(10**27), max_value=10**27)  # |value| <= 1E: no bare mantissa


@given(NANOS, st.sampled_from([BINARY, SI, EXP]))
def test_formatted_quantities_parse_back_to_the_same_value(nanos: int, fmt: QuantityFormat) -> None:
    value = _d(nanos, -9)
    assert parse_quantity(format_quantity(value, fmt)) == value


@given(st.integers(min_value=-(2**63) + 1, max_value=2**63 - 1))
def test_binary_sizes_parse_back_to_the_same_value(count: int) -> None:
    assert parse_quantity(format_quantity(count, BINARY)) == count


@given(st.integers(min_value=-(10**40), max_value=10**40))
def test_exponent_quantities_parse_back_to_the_same_value(count: int) -> None:
    assert parse_quantity(format_quantity(count, EXP)) == count


QUANTITY_TEXTS = st.builds(
    "{}{}{}{}{}".format,
    st.sampled_from(["", "+", "-"]),
    st.sampled_from(["", "0", "00"]),
    st.integers(min_value=0, max_value=10**20).map(str),
    st.one_of(st.just(""), st.from_regex(r"\.[0-9]{0,12}", fullmatch=True)),
    st.one_of(
        st.sampled_from(["", "n", "u", "m", "k", "M", "G", "T", "P", "E"]),
        st.sampled_from(["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"]),
        st.from_regex(r"[eE][+-]?[0-9]{1,2}", fullmatch=True),
    ),
)


@given(QUANTITY_TEXTS)
def test_canonical_quantity_is_idempotent(text: str) -> None:
    once = canonical_quantity(text)
    assert canonical_quantity(once) == once


@given(QUANTITY_TEXTS)
def test_canonical_quantity_keeps_the_value_to_the_nano(text: str) -> None:
    value, fmt = parse_quantity(text), quantity_format_of(text)
    assume(not (fmt == BINARY and abs(value) > 2**63 - 1))  # capped
    assume(not (fmt == SI and abs(value) >= 10**21))  # printed without its suffix
    with localcontext() as context:
        context.prec = 200  # up to 10**20 * 10**99, to the nano
        expected = value.quantize(Decimal("1e-9"), rounding=ROUND_UP)
    assert parse_quantity(canonical_quantity(text)) == expected
