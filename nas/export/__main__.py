"""`python -m nas.export`."""

import sys

from nas.export.cli import main

sys.exit(main())
