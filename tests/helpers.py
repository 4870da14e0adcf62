"""Helpers shared by the tests and the scripts: one definition each.

Scripts import this module by path (``scripts/`` puts the repository root on ``sys.path``),
so it imports nothing beyond the standard library.
"""

from __future__ import annotations

import socket

NS_PER_SECOND = 1_000_000_000


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
