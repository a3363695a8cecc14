"""``python -m fourm``: the ``fourm`` command (see :mod:`fourm.cli`)."""
import sys

from fourm.cli import main

sys.exit(main())
