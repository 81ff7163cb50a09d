"""`python -m nas.latency`."""

import sys

from nas.latency.cli import main

sys.exit(main())
