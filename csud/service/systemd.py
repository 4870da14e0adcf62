"""The systemd notify protocol (sd_notify(3)), in a few lines over an AF_UNIX datagram socket.

Under ``Type=notify`` systemd sets ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract
namespace) and, with ``WatchdogSec=``, ``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``). The daemon sends
``READY=1`` once its config and index are open, ``STATUS=...`` lines, ``WATCHDOG=1`` from its event
loop (so a stuck loop stops sending and systemd restarts the service), ``RELOADING=1`` around a
reload and ``STOPPING=1`` on shutdown.

Invariants: without ``$NOTIFY_SOCKET`` every call is a no-op (a terminal, the tests, another
supervisor); a send never raises and never blocks (the socket is non-blocking; a failure is
logged once and the notifier carries on). Not implemented on purpose: file-descriptor passing
(``FDSTORE``) and ``$LISTEN_FDS`` socket activation, which csud does not use.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

from csud.log import get_logger

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"
USEC_PER_SECOND = 1_000_000


def notify_address(value: str | None) -> str | bytes | None:
    """``$NOTIFY_SOCKET`` as a ``sendto`` address: ``@name`` is ``b"\\0name"`` (abstract namespace).

    Only absolute paths and abstract names are valid (as in sd_notify); anything else is ``None``.
    """
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


def watchdog_seconds(environ: Mapping[str, str], pid: int) -> float | None:
    """The watchdog timeout from ``$WATCHDOG_USEC``, or ``None`` when no watchdog applies to ``pid``.

    As sd_watchdog_enabled(3): ``$WATCHDOG_PID``, when set, must name this process (a child that
    inherited the environment must not ping for its parent); a missing, malformed or zero
    ``$WATCHDOG_USEC`` means no watchdog.
    """
    raw_pid = environ.get(WATCHDOG_PID_ENV)
    if raw_pid:
        try:
            if int(raw_pid) != pid:
                return None
        except ValueError:
            return None
    try:
        usec = int(environ.get(WATCHDOG_USEC_ENV, ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / USEC_PER_SECOND


class Notifier:
    """Sends notify messages to systemd; a no-op when not started by systemd (``Type=notify``)."""

    def __init__(self, environ: Mapping[str, str] | None = None, pid: int | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = notify_address(env.get(NOTIFY_SOCKET_ENV))
        self.watchdog_seconds = watchdog_seconds(env, os.getpid() if pid is None else pid)
        self._socket: socket.socket | None = None
        self._failed = False
        self._last_status = ""
        self.log = get_logger(component="systemd")

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str | int) -> bool:
        """One datagram of ``KEY=value`` lines (keys upper-cased). True when it was sent."""
        if self.address is None:
            return False
        message = "\n".join(f"{key.upper()}={value}" for key, value in fields.items())
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.setblocking(False)
            self._socket.sendto(message.encode(), self.address)
        except OSError as exc:
            if not self._failed:  # once: a supervisor that went away must not flood the log
                self._failed = True
                self.log.warning("sd_notify_failed", error=exc.strerror or str(exc))
            return False
        self._failed = False
        return True

    def ready(self, status: str = "") -> None:
        self._last_status = status
        self.send(ready=1, **({"status": status} if status else {}))

    def status(self, text: str) -> None:
        """``STATUS=``, sent only when it changed (the export loop calls this every few seconds)."""
        if text != self._last_status:
            self._last_status = text
            self.send(status=text)

    def watchdog(self) -> None:
        self.send(watchdog=1)

    def reloading(self) -> None:
        # MONOTONIC_USEC lets systemd >= 253 (Type=notify-reload) match the reload; older ones ignore it.
        self.send(reloading=1, monotonic_usec=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)

    def stopping(self, status: str = "") -> None:
        self.send(stopping=1, **({"status": status} if status else {}))

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
