"""``python -m ophyd_xspress`` is the ``ophyd-xspress`` command."""

import sys

from .cli import main

sys.exit(main())
