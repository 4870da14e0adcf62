"""Shared test policy.

A test that needs something this machine lacks (a Debian package, root for a tmpfs) is skipped on
a developer's machine, but FAILS under CI (``CI`` set): there, ``make test`` installs everything
and runs as root, so a skip could only hide a missing feature.
"""

from __future__ import annotations

import os

import pytest


def skip_or_fail(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"required in CI: {reason}", pytrace=False)
    pytest.skip(reason)
