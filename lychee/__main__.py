"""``python -m lychee``: the command line (see :mod:`lychee.cli`)."""

import sys

from .cli import main

sys.exit(main())
