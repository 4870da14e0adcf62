"""A minimal HTTP/1.x server on the daemon's event loop: ``/metrics``, ``/healthz``, ``/status``.

Why not prometheus-client's ``start_http_server``: it answers from its own thread, so it keeps
answering while the event loop is stuck. Served from the loop itself, ``/healthz`` answering at
all proves that the loop runs; heavy work (rendering thousands of series) is still handed to a
thread by the route itself.

Deliberately small: ``GET`` and ``HEAD`` only, one request per connection (``Connection: close``),
no request body, the request head bounded to :data:`MAX_REQUEST_HEAD_BYTES` and read within
:data:`REQUEST_TIMEOUT_SECONDS`, at most :data:`MAX_CONNECTIONS` at once (more get 503). It is
meant for a loopback or management address, not for the Internet: no TLS, no authentication.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus

from csud.log import get_logger

MAX_REQUEST_HEAD_BYTES = 8192
REQUEST_TIMEOUT_SECONDS = 5.0
WRITE_TIMEOUT_SECONDS = 10.0
MAX_CONNECTIONS = 32


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


Route = Callable[[], Awaitable[Response]]


def parse_request_line(head: bytes) -> tuple[str, str]:
    """``(method, path)`` from a request head; the query string is dropped. ``ValueError`` if bad."""
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
        raise ValueError(f"malformed request line {line[:80]!r}")
    return parts[0], parts[1].split("?", 1)[0]


def render(response: Response, head_only: bool = False) -> bytes:
    reason = HTTPStatus(response.status).phrase
    head = (
        f"HTTP/1.1 {response.status} {reason}\r\n"
        f"Content-Type: {response.content_type}\r\n"
        f"Content-Length: {len(response.body)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    ).encode("latin-1")
    return head if head_only else head + response.body


def text(status: int, body: str) -> Response:
    return Response(status, body.encode())


class HttpServer:
    """Serves ``routes`` (path -> coroutine function) on ``host:port`` until :meth:`close`."""

    def __init__(self, routes: Mapping[str, Route]) -> None:
        self.routes = dict(routes)
        self._server: asyncio.Server | None = None
        self._active = 0
        self.log = get_logger(component="http")

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(
            self._handle, host.strip("[]"), port, limit=MAX_REQUEST_HEAD_BYTES, reuse_address=True
        )

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._active += 1
        try:
            if self._active > MAX_CONNECTIONS:
                response, head_only = text(503, "too many connections\n"), False
            else:
                response, head_only = await self._respond(reader)
            writer.write(render(response, head_only))
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_SECONDS)
        except (OSError, TimeoutError):
            pass  # the client went away or stalled: nothing to tell it
        finally:
            self._active -= 1
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[Response, bool]:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_SECONDS)
            method, path = parse_request_line(head)
        except asyncio.LimitOverrunError:
            return text(431, "request head too large\n"), False
        except (asyncio.IncompleteReadError, TimeoutError, ValueError):
            return text(400, "bad request\n"), False
        if method not in ("GET", "HEAD"):
            return text(405, "only GET and HEAD\n"), False
        route = self.routes.get(path)
        if route is None:
            return text(404, f"not found; try {', '.join(sorted(self.routes))}\n"), method == "HEAD"
        try:
            response = await route()
        except Exception:  # a broken route must not take the endpoint down
            self.log.exception("http_route_failed", path=path)
            response = text(500, "internal error\n")
        return response, method == "HEAD"
