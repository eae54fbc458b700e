"""Crash points of a publish, the per-destination lock, and torn journal records."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelcache.contract.errors import DestinationBusyError
from modelcache.pulling.journaling import open_journal, read_journal, read_records
from modelcache.pulling.staging import StagingPaths, exclusive_lock, recover_publish


def staged(tmp_path: Path) -> StagingPaths:
    paths = StagingPaths(tmp_path / "models" / "abc")
    (paths.files / "sub").mkdir(parents=True)
    (paths.files / "sub" / "w.bin").write_bytes(b"new")
    paths.staged_manifest.write_text('{"version": 1}')
    return paths


def test_crash_before_any_rename_is_finished_on_recovery(tmp_path: Path) -> None:
    paths = staged(tmp_path)
    recover_publish(paths)
    assert (paths.dest / "sub" / "w.bin").read_bytes() == b"new"
    assert paths.manifest.read_text() == '{"version": 1}'
    assert not paths.root.exists()


def test_crash_after_the_old_version_was_retired_is_finished_on_recovery(tmp_path: Path) -> None:
    paths = staged(tmp_path)
    paths.retired.mkdir()
    (paths.retired / "old.bin").write_bytes(b"old")
    recover_publish(paths)
    assert sorted(p.name for p in paths.dest.rglob("*")) == ["sub", "w.bin"]
    assert not paths.retired.exists()


def test_crash_after_the_tree_moved_but_before_the_manifest_did(tmp_path: Path) -> None:
    paths = staged(tmp_path)
    paths.files.rename(paths.dest)
    recover_publish(paths)
    assert paths.manifest.exists()
    assert (paths.dest / "sub" / "w.bin").exists()


def test_replacing_a_published_model_keeps_only_the_new_version(tmp_path: Path) -> None:
    paths = staged(tmp_path)
    paths.dest.mkdir()
    (paths.dest / "old.bin").write_bytes(b"old")
    recover_publish(paths)
    assert [p.name for p in paths.dest.iterdir()] == ["sub"]


def test_nothing_staged_means_nothing_happens(tmp_path: Path) -> None:
    paths = StagingPaths(tmp_path / "m")
    recover_publish(paths)
    assert list(tmp_path.iterdir()) == []


def test_second_puller_of_a_destination_is_refused(tmp_path: Path) -> None:
    paths = StagingPaths(tmp_path / "m")
    with (
        exclusive_lock(paths),
        pytest.raises(DestinationBusyError, match="another process is pulling"),
        exclusive_lock(paths),
    ):
        pass
    with exclusive_lock(paths):  # released with the first holder
        pass


def test_journal_ignores_a_torn_record_and_keeps_others(tmp_path: Path) -> None:
    paths = StagingPaths(tmp_path / "m")
    journal, chunk_size, done = open_journal(paths, "fp-1", 1024 * 1024)
    assert (chunk_size, done) == (1024 * 1024, {})
    journal.record(0, 0)
    journal.record(1, 3)
    journal.close()
    with open(paths.journal, "ab") as f:
        f.write(b"2 ")  # the process died mid-record
    assert read_records(paths.journal) == {(0, 0), (1, 3)}


def test_journal_resumes_with_its_own_chunk_size_and_restarts_for_a_new_source(
    tmp_path: Path,
) -> None:
    paths = StagingPaths(tmp_path / "m")
    journal, _, _ = open_journal(paths, "fp-1", 1 << 20)
    journal.record(0, 1)
    journal.close()
    again, chunk_size, done = open_journal(paths, "fp-1", 4 << 20)
    again.close()
    assert (chunk_size, done) == (1 << 20, {(0, 1): ""})
    fresh, chunk_size, done = open_journal(paths, "fp-2", 4 << 20)
    fresh.close()
    assert (chunk_size, done) == (4 << 20, {})


def test_forgetting_a_file_keeps_the_other_files_records(tmp_path: Path) -> None:
    paths = StagingPaths(tmp_path / "m")
    journal, _, _ = open_journal(paths, "fp", 1 << 20)
    for record in [(0, 0), (1, 0), (1, 1), (2, 5)]:
        journal.record(*record)
    journal.forget_file(1)
    journal.record(1, 0)
    journal.close()
    assert read_records(paths.journal) == {(0, 0), (2, 5), (1, 0)}


def test_chunk_digests_survive_in_the_journal_and_a_bad_one_is_not_trusted(
    tmp_path: Path,
) -> None:
    paths = StagingPaths(tmp_path / "m")
    journal, _, _ = open_journal(paths, "fp", 1 << 20)
    journal.record(0, 0, "ab" * 32)
    journal.record(0, 1)
    journal.record(1, 0, "cd" * 32)
    journal.forget_file(1)
    journal.close()
    with open(paths.journal, "ab") as f:
        f.write(b"0 2 not-a-digest\n")
    assert read_journal(paths.journal) == {(0, 0): "ab" * 32, (0, 1): ""}
