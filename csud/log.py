"""structlog set-up: JSON lines under systemd (or any pipe), a readable console on a terminal.

Context is bound per camera task (``camera``, ``commune``). As defence in depth, every string
value is scrubbed of URL userinfo (``rtsp://user:pass@`` becomes ``rtsp://***@``) before it is
rendered, so a credential that slipped into an exception text still never reaches the journal.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]*@")
_SECRET_KEYS = frozenset({"password", "authorization", "passwd", "secret"})


def scrub(text: str) -> str:
    """Remove userinfo from every URL in ``text``."""
    return _USERINFO.sub(r"\1***@", text)


def _scrub_processor(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event.items():
        if key.lower() in _SECRET_KEYS:
            event[key] = "***"
        elif isinstance(value, str) and "@" in value:
            event[key] = scrub(value)
    return event


class _StdoutLogger:
    """Writes each rendered line to whatever ``sys.stdout`` is *now*, and flushes it.

    structlog's PrintLogger keeps the stream it was created with; under pytest's capture, or
    after a redirect, that stream may be closed by the time a cached logger writes.
    """

    def msg(self, message: str) -> None:
        print(message, file=sys.stdout, flush=True)

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


def _logger_factory(*_args: Any) -> _StdoutLogger:
    return _StdoutLogger()


def configure(level: str = "info", json: bool | None = None) -> None:
    """Configure structlog and the stdlib loggers of our dependencies.

    ``json=None`` chooses by whether stdout is a terminal.
    """
    if json is None:
        json = not sys.stdout.isatty()
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _scrub_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=_logger_factory,
        cache_logger_on_first_use=True,
    )
    # aiortsp logs whole RTSP messages (Authorization headers included) at DEBUG, and request
    # bodies at WARNING; our own session code reports what matters, so keep it quiet.
    for name in ("rtsp_client", "aiortsp", "rtp.session", "aiortsp.rtsp.session", "aiortsp.rtsp.reader"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def get_logger(**context: Any) -> Any:
    return structlog.get_logger().bind(**context)
