"""``python -m ophyd_xspress.cli`` is the ``ophyd-xspress`` command."""

import sys

from . import main

sys.exit(main())
