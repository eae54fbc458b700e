from __future__ import annotations

import pytest

from modelcache.contract.errors import UnsafeListingError
from modelcache.pulling.listing import RemoteFile
from modelcache.pulling.safety import check_listing


def files(*paths: str) -> list[RemoteFile]:
    return [RemoteFile(path=p, size=1, url="http://x/" + p) for p in paths]


@pytest.mark.parametrize(
    "name",
    [
        "../evil",
        "a/../../evil",
        "/etc/passwd",
        "a\\..\\b",
        "a\x00b",
        "a//b",
        "./a",
        "a/.",
        "",
        "a\nb",
    ],
)
def test_escaping_names_are_refused(name: str) -> None:
    with pytest.raises(UnsafeListingError, match="unsafe file name"):
        check_listing("hf://o/m", files("ok.json", name), max_files=10)


def test_too_many_files_refused() -> None:
    with pytest.raises(UnsafeListingError, match="more than the limit of 2"):
        check_listing("hf://o/m", files("a", "b", "c"), max_files=2)


def test_duplicates_and_file_folder_clashes_refused() -> None:
    with pytest.raises(UnsafeListingError, match="twice"):
        check_listing("s3://b/p", files("A.bin", "a.bin"), max_files=10)
    with pytest.raises(UnsafeListingError, match="both as a file and as a folder"):
        check_listing("s3://b/p", files("a", "a/b"), max_files=10)


def test_ordinary_nested_listing_passes() -> None:
    check_listing(
        "hf://o/m", files("config.json", "weights/a.safetensors", "weights/b"), max_files=10
    )
