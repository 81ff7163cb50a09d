"""`python -m nas.search`."""

import sys

from nas.search.cli import main

sys.exit(main())
