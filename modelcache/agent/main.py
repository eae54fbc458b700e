"""`modelcache-agent`: keeps one node's model cache (see README for flags and endpoints)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from modelcache.agent.runtime import serve_until_cancelled
from modelcache.agent.settings import settings_from
from modelcache.contract.errors import UsageError
from modelcache.contract.service_process import run_until_signalled


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings, verbose = settings_from(sys.argv[1:] if argv is None else argv)
    except UsageError as e:
        print(f"modelcache-agent: error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format=f"%(asctime)s %(levelname)s {settings.node_name} %(name)s: %(message)s",
    )
    return run_until_signalled(serve_until_cancelled(settings), "modelcache-agent")


if __name__ == "__main__":
    sys.exit(main())
