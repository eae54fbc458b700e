"""A new revision of a model usually changes a few small files: keep the big ones by hard link.

A file is taken from the published model when the previous manifest lists it at the same path
with the same size and the same source digest, and the published copy still has that size. The
link costs no bytes and no time on the same filesystem; the publish rename then carries it into
the new folder while the old folder is retired.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from modelcache.pulling.journaling import Journal
from modelcache.pulling.manifests import read_manifest
from modelcache.pulling.staging import StagingPaths
from modelcache.pulling.transfers import FileTransfer

log = logging.getLogger(__name__)


def link_unchanged(paths: StagingPaths, transfers: Sequence[FileTransfer], journal: Journal) -> int:
    """Link every unchanged file into staging and journal it as done; returns bytes reused.

    Blocking (stat, link): call it on a thread.
    """
    manifest = read_manifest(paths.manifest)
    if manifest is None or not paths.dest.is_dir():
        return 0
    previous = {f.path: f for f in manifest.files}
    reused = 0
    for transfer in transfers:
        old = previous.get(transfer.remote.path)
        digest = transfer.remote.digest
        if old is None or digest is None or old.digest != digest or old.size != transfer.size:
            continue
        if transfer.complete:
            continue
        published = paths.dest / transfer.remote.path
        try:
            if published.stat().st_size != transfer.size:
                continue
            transfer.path.parent.mkdir(parents=True, exist_ok=True)
            transfer.path.unlink(missing_ok=True)
            os.link(published, transfer.path)
        except OSError as e:  # another filesystem, a vanished file: fetch it instead
            log.info("cannot reuse %s (%s); fetching it", published, e)
            continue
        for chunk in transfer.chunks:
            journal.record(transfer.index, chunk.index)
        transfer.mark_reused()
        reused += transfer.size
    return reused
