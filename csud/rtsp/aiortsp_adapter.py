"""The one module that imports aiortsp: csud bends it here and nowhere else.

What csud takes from aiortsp (pinned to an exact version in pyproject.toml; the contract it
relies on is asserted by ``tests/unit/test_aiortsp_contract.py``):

- ``RTSPConnection``: the TCP connection, ``send_request`` (CSeq, the wait for the answer with
  a timeout, the 401 challenge answered once with Basic or Digest, the Digest ``nextnonce``),
  ``send_binary`` and ``send_response``, and its ``active_requests`` (CSeq -> future) and
  ``result`` (the connection's outcome) futures;
- ``RTSPParser``: parses one whole RTSP message handed over by csud's demultiplexer;
- the error classes, turned into csud's by :class:`rtsp_errors`.

What csud does not take: aiortsp's RTSP session (csud sends OPTIONS .. TEARDOWN itself, see
:mod:`csud.rtsp.client`), its SDP parser (:mod:`csud.rtsp.sdp` is the one in use) and its RTP
path (a dpkt object per packet, queued without bound: :class:`LeanConnection` replaces
``data_received`` with :class:`~csud.rtsp.interleave.InterleavedDemux`, which hands ``$``
frames straight to the packet callback and only the rare RTSP message to the parser).

Two behaviours are changed: Digest is preferred when a camera offers Basic too (aiortsp picks
Basic, which sends the password in the clear), and a request from the camera is answered 200
(aiortsp answers 551, which some cameras take as a failure). No private attribute of aiortsp is
read or written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiortsp.rtsp.connection import RTSPConnection
from aiortsp.rtsp.errors import RTSPConnectionError, RTSPError, RTSPResponseError, RTSPTimeoutError
from aiortsp.rtsp.parser import RTSPParser

from csud.errors import AuthError, StreamError
from csud.rtsp.interleave import InterleavedDemux

AIORTSP_VERSION = "1.4.0"  # the version the contract test checks; pyproject pins the same

# (channel, buffer, start, end): one interleaved frame, not copied.
PacketHandler = Callable[[int, bytes, int, int], None]


@dataclass(frozen=True, slots=True)
class RtspReply:
    """A 2xx answer: header names lower-case (a repeated header keeps its first value)."""

    status: int
    reason: str
    headers: dict[str, str]
    body: str  # decoded as UTF-8, undecodable bytes replaced

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)


def _reply(response: Any) -> RtspReply:
    headers: dict[str, str] = {}
    for name, value in (response.headers or {}).items():
        headers[str(name).lower()] = str(value[0] if isinstance(value, list) and value else value)
    return RtspReply(
        status=int(response.status),
        reason=str(response.status_msg or ""),
        headers=headers,
        body=bytes(response.data).decode("utf-8", "replace"),
    )


class LeanConnection(RTSPConnection):
    """aiortsp's connection with csud's interleaved demultiplexer in front of its parser."""

    def __init__(
        self,
        host: str,
        port: int,
        username: str | None,
        password: str | None,
        on_packet: PacketHandler,
        timeout: float = 10.0,
    ) -> None:
        super().__init__(host, port, username, password, timeout=timeout)
        self.bytes_received = 0
        self.demux = InterleavedDemux(on_packet, self._on_message)
        self._messages = RTSPParser()

    async def open(self) -> None:
        """Connect (``StreamError`` through :class:`rtsp_errors` on failure)."""
        await self.prepare()

    async def request(self, method: str, url: str, headers: dict[str, str] | None = None) -> RtspReply:
        """Send one request and return its 2xx answer; aiortsp's errors otherwise (see
        :class:`rtsp_errors`). A 401 is answered once with the credentials."""
        return _reply(await self.send_request(method, url, dict(headers or {})))

    def data_received(self, data: bytes) -> None:
        self.bytes_received += len(data)
        try:
            self.demux.feed(data)
        except ValueError as exc:
            self._fail(StreamError(f"camera sent an invalid RTSP stream: {exc}"))

    def _on_message(self, message: bytes) -> None:
        try:
            for msg in self._messages.parse(message):
                if msg.type == "response":
                    future = self.active_requests.get(msg.cseq)
                    if future is not None and not future.done():
                        future.set_result(msg)
                elif msg.type == "request":
                    # Some servers ping the client; a 200 keeps them happy without desynchronising.
                    self.send_response(msg, 200, "OK")
        except Exception as exc:  # aiortsp's parser raises assertions and ValueErrors alike
            self._messages = RTSPParser()  # never resume inside a message it gave up on
            self._fail(StreamError(f"camera sent an unparsable RTSP message: {type(exc).__name__}"))

    def _fail(self, error: Exception) -> None:
        if not self.result.done():
            self.result.set_exception(error)
        self.close()

    def handle_401(self, resp: Any) -> bool:
        # aiortsp picks Basic whenever it is offered: show it only the Digest offers when there
        # are some, so that the password is never sent in the clear to a camera that can do better.
        offers = resp.headers.get("www-authenticate") or []
        offers = offers if isinstance(offers, list) else [offers]
        digest = [o for o in offers if isinstance(o, str) and o.startswith("Digest ")]
        if digest and len(digest) < len(offers) and "digest" in self.accept_auth:
            resp.headers["www-authenticate"] = digest if len(digest) > 1 else digest[0]
        return bool(super().handle_401(resp))

    def finish(self) -> None:
        """Close the socket and resolve ``result`` if nothing else did."""
        self.close()
        if not self.result.done():
            self.result.set_result("closed")


class rtsp_errors:
    """Turn aiortsp's errors into csud's, without leaking anything but status and host."""

    def __init__(self, where: str) -> None:
        self.where = where

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None or isinstance(exc, StreamError):
            return
        if isinstance(exc, RTSPResponseError):
            status = exc.response.status if exc.response is not None else 0
            reason = exc.response.status_msg if exc.response is not None else ""
            if status == 401:
                raise AuthError(f"{self.where} refused the credentials (401 {reason})") from None
            raise StreamError(f"{self.where} answered {status} {reason}".rstrip()) from None
        if isinstance(exc, RTSPTimeoutError):
            raise StreamError(f"{self.where} did not answer within the request timeout") from None
        if isinstance(exc, RTSPConnectionError):
            raise StreamError(f"cannot connect to {self.where}") from None
        if isinstance(exc, RTSPError | AssertionError | KeyError | ValueError):
            raise StreamError(f"{self.where}: RTSP exchange failed ({type(exc).__name__})") from None
        if isinstance(exc, OSError):
            raise StreamError(f"{self.where}: {exc.strerror or type(exc).__name__}") from None


# Errors the session's close() tolerates from a TEARDOWN.
TEARDOWN_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, RTSPError, StreamError, OSError)
