"""One RTSP session with one camera: aiortsp speaks RTSP, csud's own lean path carries RTP.

aiortsp does OPTIONS, DESCRIBE, SETUP, PLAY, GET_PARAMETER and TEARDOWN, with Basic and Digest
authentication. Its own RTP path makes a dpkt object per packet and queues it without bound;
measured here it costs several times csud's, so the connection below replaces only
``data_received``: :class:`~csud.rtsp.interleave.InterleavedDemux` splits the TCP stream by
offsets, hands ``$`` frames straight to the recorder's callback and passes the rare RTSP
message to aiortsp's parser.

With ``transport="udp"`` RTP and RTCP arrive on two UDP sockets (:mod:`csud.rtsp.udp`) and go to
the same packet callback.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiortsp.rtsp.auth import DigestAuth
from aiortsp.rtsp.connection import RTSPConnection
from aiortsp.rtsp.errors import RTSPConnectionError, RTSPError, RTSPResponseError, RTSPTimeoutError
from aiortsp.rtsp.session import RTSPMediaSession

from csud.errors import AuthError, StreamError
from csud.rtsp.interleave import InterleavedDemux
from csud.rtsp.sdp import decode_sprop
from csud.rtsp.udp import UdpMedia

RTP_CHANNEL = 0
RTCP_CHANNEL = 1
TEARDOWN_TIMEOUT_SECONDS = 2.0

# (channel, buffer, start, end): one interleaved frame, not copied.
PacketHandler = Callable[[int, bytes, int, int], None]


@dataclass(frozen=True, slots=True)
class StreamDescription:
    """What DESCRIBE told us about the video media."""

    encoding: str  # "H264", "H265"
    payload_type: int
    clock_rate: int
    parameter_sets: tuple[bytes, ...]  # sprop-parameter-sets (H.264) or sprop-vps/sps/pps, decoded
    session_timeout_seconds: int
    fmtp: dict[str, str] = field(default_factory=dict)  # a=fmtp parameters, keys lower-case


class _LeanConnection(RTSPConnection):
    """aiortsp's connection with csud's interleaved demultiplexer in front of its parser."""

    def __init__(self, *args: Any, on_packet: PacketHandler, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bytes_received = 0
        self.demux = InterleavedDemux(on_packet, self._on_message)

    def data_received(self, data: bytes) -> None:
        self.bytes_received += len(data)
        try:
            self.demux.feed(data)
        except ValueError as exc:
            self._fail(StreamError(f"camera sent an invalid RTSP stream: {exc}"))

    def _on_message(self, message: bytes) -> None:
        try:
            for msg in self.parser.parse(message):
                if msg.type == "response":
                    future = self.active_requests.get(msg.cseq)
                    if future is not None and not future.done():
                        future.set_result(msg)
                elif msg.type == "request":
                    # Some servers ping the client; a 200 keeps them happy without desynchronising.
                    self.send_response(msg, 200, "OK")
        except Exception as exc:  # aiortsp's parser raises assertions and ValueErrors alike
            self._fail(StreamError(f"camera sent an unparsable RTSP message: {type(exc).__name__}"))

    def _fail(self, error: Exception) -> None:
        if not self.result.done():
            self.result.set_exception(error)
        if self._transport:
            self._transport.close()

    def handle_401(self, resp: Any) -> bool:
        # aiortsp picks Basic whenever it is offered; prefer Digest, which does not send the
        # password in the clear.
        if not self._auth and self.username and self.password:  # type: ignore[has-type]
            offers = resp.headers.get("www-authenticate") or []
            offers = offers if isinstance(offers, list) else [offers]
            if any(o.startswith("Digest ") for o in offers) and "digest" in self.accept_auth:
                self._auth = DigestAuth(self.username, self.password)
        return bool(super().handle_401(resp))


class _InterleavedTransport:
    """The few transport hooks aiortsp's RTSPMediaSession calls, for TCP-interleaved RTP."""

    def on_transport_request(self, headers: dict[str, Any]) -> None:
        headers["Transport"] = f"RTP/AVP/TCP;unicast;interleaved={RTP_CHANNEL}-{RTCP_CHANNEL}"

    def on_transport_response(self, headers: dict[str, Any]) -> None:
        transport = headers.get("transport", "")
        if "interleaved" not in transport:
            raise StreamError(f"camera refused TCP-interleaved transport (Transport: {transport[:80]!r})")
        channels = transport.split("interleaved=", 1)[1].split(";", 1)[0].strip()
        if channels != f"{RTP_CHANNEL}-{RTCP_CHANNEL}":
            raise StreamError(f"camera chose interleaved channels {channels}, expected 0-1")

    async def warmup(self) -> None:
        return None


class _UdpTransport(_InterleavedTransport):
    """Transport hooks for RTP/RTCP over UDP on the ports :class:`UdpMedia` bound."""

    def __init__(self, media: UdpMedia) -> None:
        self.media = media

    def on_transport_request(self, headers: dict[str, Any]) -> None:
        headers["Transport"] = f"RTP/AVP;unicast;client_port={self.media.rtp_port}-{self.media.rtcp_port}"

    def on_transport_response(self, headers: dict[str, Any]) -> None:
        transport = headers.get("transport", "")
        fields: dict[str, str] = {}
        for part in transport.split(";"):
            key, _, value = part.strip().partition("=")
            fields[key] = value
        if "interleaved" in fields or "RTP/AVP/TCP" in transport:
            raise StreamError("camera answered UDP SETUP with TCP-interleaved transport")
        server_port = fields.get("server_port", "")
        rtcp = server_port.split("-")[1] if "-" in server_port else ""
        if rtcp.isdigit():
            self.media.server_rtcp_port = int(rtcp)
        source = fields.get("source", "")
        if source:
            self.media.camera_ip = source  # media may come from another address than RTSP


class RtspSession:
    """Connect, describe, set up and play one camera; then keep it alive until it fails or stops.

    ``url`` carries no credentials (config strips them); they come as ``username``/``password``
    and are never put in a message, log or exception text.
    """

    def __init__(
        self,
        host: str,
        port: int,
        url: str,
        username: str | None,
        password: str | None,
        on_packet: PacketHandler,
        request_timeout_seconds: float = 10.0,
        transport: str = "tcp",
        udp_bind: str = "0.0.0.0",
    ) -> None:
        self.host = host
        self.port = port
        self.url = url
        self._username = username
        self._password = password
        self._on_packet = on_packet
        self._timeout = request_timeout_seconds
        self._conn: _LeanConnection | None = None
        self._session: RTSPMediaSession | None = None
        self._transport_name = transport
        self._udp_bind = udp_bind
        self._udp: UdpMedia | None = None
        self.description: StreamDescription | None = None

    @property
    def bytes_received(self) -> int:
        udp = self._udp.bytes_received if self._udp else 0
        return udp + (self._conn.bytes_received if self._conn else 0)

    @property
    def foreign_datagrams(self) -> int:
        """UDP datagrams from another host than the camera, dropped."""
        return self._udp.foreign_datagrams if self._udp else 0

    def send_rtcp(self, data: bytes) -> None:
        """Send an RTCP packet (our receiver report) to the camera, on whichever transport."""
        if self._udp is not None:
            self._udp.send_rtcp(data)
        elif self._conn is not None and self._conn.running:
            self._conn.send_binary(RTCP_CHANNEL, data)

    @property
    def garbage_bytes(self) -> int:
        return self._conn.demux.garbage_bytes if self._conn else 0

    async def start(
        self, on_described: Callable[[StreamDescription], None] | None = None
    ) -> StreamDescription:
        """OPTIONS, DESCRIBE, SETUP, PLAY. Raises :class:`StreamError` (or :class:`AuthError`).

        ``on_described`` runs after SETUP and before PLAY is sent: whatever must be ready to
        take packets (the depacketizer for the described codec and payload type) is set up
        there, since media may follow PLAY's answer in the same TCP read.
        """
        conn = _LeanConnection(
            self.host,
            self.port,
            self._username,
            self._password,
            timeout=self._timeout,
            on_packet=self._on_packet,
        )
        self._conn = conn
        with _rtsp_errors(f"{self.host}:{self.port}"):
            await conn.prepare()
            shim = _InterleavedTransport()
            if self._transport_name == "udp":
                self._udp = await UdpMedia.open(self._udp_bind, self.host, self._on_packet)
                shim = _UdpTransport(self._udp)
            session = RTSPMediaSession(conn, self.url, transport=shim)
            self._session = session
            await session.setup()
            description = _describe(session)
            self.description = description
            if on_described is not None:
                on_described(description)
            await session.play()
        return description

    async def keep_alive(self) -> None:
        if self._session is None:
            return
        with _rtsp_errors(f"{self.host}:{self.port}"):
            await self._session.keep_alive()

    @property
    def closed(self) -> asyncio.Future[Any]:
        """Resolves (or raises) when the connection ends."""
        assert self._conn is not None
        result: asyncio.Future[Any] = self._conn.result
        return result

    async def close(self) -> None:
        """TEARDOWN within a short bound, then close the socket. Never raises."""
        conn, session = self._conn, self._session
        self._session = None
        if self._udp is not None:
            self._udp.close()
        if conn is None:
            return
        if session is not None and session.session_id and conn.running:
            with contextlib.suppress(TimeoutError, RTSPError, StreamError, OSError):
                await asyncio.wait_for(session.teardown(), TEARDOWN_TIMEOUT_SECONDS)
        conn.close()
        if not conn.result.done():
            conn.result.set_result("closed")


class _rtsp_errors:
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


SPROP_KEYS = {
    "H264": ("sprop-parameter-sets",),
    "H265": ("sprop-vps", "sprop-sps", "sprop-pps"),
}


def _describe(session: RTSPMediaSession) -> StreamDescription:
    sdp = session.sdp
    media = sdp.get_media("video") if sdp else None
    if not media:
        raise StreamError("the camera's SDP has no video media")
    attributes = media.get("attributes", {})
    rtpmap = attributes.get("rtpmap")
    if not isinstance(rtpmap, dict):
        raise StreamError("the camera's SDP has no usable a=rtpmap for its video media")
    raw_fmtp = attributes.get("fmtp") if isinstance(attributes.get("fmtp"), dict) else {}
    fmtp = {str(k).lower(): str(v) for k, v in raw_fmtp.items()}
    encoding = str(rtpmap["encoding"]).upper()
    sets: list[bytes] = []
    for key in SPROP_KEYS.get(encoding, ()):
        try:
            sets += decode_sprop(key, fmtp.get(key, ""))
        except ValueError as exc:
            raise StreamError(f"the camera's SDP has an invalid {key}: {exc}") from None
    timeout = int(session.session_keepalive / 0.9) if session.session_keepalive else 60
    return StreamDescription(
        encoding=encoding,
        payload_type=int(rtpmap["pt"]),
        clock_rate=int(rtpmap["clockRate"]),
        parameter_sets=tuple(sets),
        session_timeout_seconds=max(timeout, 1),
        fmtp=fmtp,
    )
