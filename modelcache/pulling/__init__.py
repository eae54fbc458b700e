"""The pull engine: moves a model's bytes from a source onto local disk, verified and atomic."""

from modelcache.pulling.manifests import Manifest, read_manifest
from modelcache.pulling.pulling import ProgressCallback, PullProgress, PullResult, pull
from modelcache.pulling.settings import PullSettings, SourceCredentials
from modelcache.pulling.staging import StagingPaths

__all__ = [
    "Manifest",
    "ProgressCallback",
    "PullProgress",
    "PullResult",
    "PullSettings",
    "SourceCredentials",
    "StagingPaths",
    "pull",
    "read_manifest",
]
