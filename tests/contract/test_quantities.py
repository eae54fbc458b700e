from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelcache.contract.errors import UsageError
from modelcache.contract.quantities import (
    format_bytes,
    parse_bytes,
    parse_quantity,
    parse_rate,
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
