"""``python -m csud.sim ...``: the same as ``csud simulate ...`` (see :func:`csud.sim.cli.main`)."""

from __future__ import annotations

import sys

from csud.sim.cli import main

if __name__ == "__main__":
    sys.exit(main())
