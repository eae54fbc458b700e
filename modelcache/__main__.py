import sys

from modelcache.cli.main import main

sys.exit(main())
