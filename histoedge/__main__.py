"""``python -m histoedge``: the same command line as the ``histoedge`` script."""

import sys

from histoedge.cli import main

sys.exit(main())
