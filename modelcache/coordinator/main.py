"""`modelcache-coordinator`: the entry point exists so the console script is installed; the service
itself is built in its own issue."""

from __future__ import annotations

import sys


def main() -> int:
    print("modelcache-coordinator is not built yet; see the project's open issues", file=sys.stderr)
    return 2
