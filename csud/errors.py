"""One exception hierarchy, split by origin.

A broad ``except`` is allowed only in the per-camera retry loop, which logs and counts.
"""

from __future__ import annotations


class CsudError(Exception):
    """Base of every error csud raises on purpose."""


class ConfigError(CsudError):
    """The configuration is missing, unreadable or invalid (CLI exit code 2)."""


class UsageError(CsudError):
    """Bad command-line usage: a naive time, a reversed interval (CLI exit code 2)."""


class StreamError(CsudError):
    """A camera stream failed: connection, RTSP status, authentication, stall."""


class AuthError(StreamError):
    """The camera refused our credentials. The message never contains them."""


class StorageError(CsudError):
    """Writing, renaming, syncing or indexing footage failed."""


class EvidenceError(CsudError):
    """An extraction or a verification found bytes that do not match what was recorded."""
