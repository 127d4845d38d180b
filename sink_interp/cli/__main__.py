"""``python -m sink_interp.cli``: the ``sink-interp`` command."""

import sys

from . import main

sys.exit(main())
