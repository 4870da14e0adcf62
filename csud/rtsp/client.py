"""One RTSP session with one camera: OPTIONS, DESCRIBE, SETUP, PLAY, keep-alive, TEARDOWN.

The exchange is written here, against :class:`~csud.rtsp.aiortsp_adapter.LeanConnection`
(aiortsp's connection, bent in that one module): it sends a request and returns the 2xx answer,
answering a 401 challenge with Basic or Digest. The DESCRIBE body is read by csud's own SDP
parser (:mod:`csud.rtsp.sdp`, the one the fuzzer fuzzes); control URLs are resolved by
:func:`~csud.rtsp.sdp.resolve_control`.

Media: TCP-interleaved by default (channels 0-1 on the RTSP connection, split by
:class:`~csud.rtsp.interleave.InterleavedDemux`), or with ``transport="udp"`` on two UDP
sockets (:mod:`csud.rtsp.udp`); either way each packet goes to the same callback.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from csud.errors import StreamError
from csud.rtsp.aiortsp_adapter import (
    TEARDOWN_ERRORS,
    LeanConnection,
    PacketHandler,
    RtspReply,
    rtsp_errors,
)
from csud.rtsp.sdp import SessionDescription, parse_sdp, resolve_control
from csud.rtsp.udp import UdpMedia

RTP_CHANNEL = 0
RTCP_CHANNEL = 1
TEARDOWN_TIMEOUT_SECONDS = 2.0
DEFAULT_SESSION_TIMEOUT_SECONDS = 60  # RFC 2326 §12.37, when SETUP's Session header gives none

__all__ = [
    "RTCP_CHANNEL",
    "RTP_CHANNEL",
    "PacketHandler",
    "RtspSession",
    "StreamDescription",
    "parse_description",
    "parse_session_header",
    "stream_description",
]


@dataclass(frozen=True, slots=True)
class StreamDescription:
    """What DESCRIBE (and SETUP, for the timeout) told us about the video media."""

    encoding: str  # "H264", "H265"
    payload_type: int
    clock_rate: int
    parameter_sets: tuple[bytes, ...]  # sprop-parameter-sets (H.264) or sprop-vps/sps/pps, decoded
    session_timeout_seconds: int
    fmtp: dict[str, str] = field(default_factory=dict)  # a=fmtp parameters, keys lower-case


def parse_description(body: str) -> SessionDescription:
    """The DESCRIBE answer's SDP, by :func:`~csud.rtsp.sdp.parse_sdp`; ``StreamError`` when
    csud cannot record from it (no H.264/H.265 video, malformed lines or parameter sets)."""
    try:
        return parse_sdp(body)
    except ValueError as exc:
        raise StreamError(f"the camera's SDP is unusable: {exc}") from None


def stream_description(sdp: SessionDescription, session_timeout_seconds: int) -> StreamDescription:
    video = sdp.video
    return StreamDescription(
        encoding=video.encoding_name,
        payload_type=video.payload_type,
        clock_rate=video.clock_rate,
        parameter_sets=tuple(video.parameter_sets),
        session_timeout_seconds=max(session_timeout_seconds, 1),
        fmtp=dict(video.fmtp),
    )


def parse_session_header(value: str) -> tuple[str, int]:
    """``Session: <id>[;timeout=<seconds>]`` -> (id, timeout); ``StreamError`` without an id.

    A timeout that is not a positive number is taken as the default: cameras get it wrong, and
    a shorter keep-alive period than needed costs one request.
    """
    session_id, *params = value.split(";")
    session_id = session_id.strip()
    if not session_id:
        raise StreamError("camera's SETUP answer has no Session header")
    timeout = DEFAULT_SESSION_TIMEOUT_SECONDS
    for param in params:
        name, _, text = param.strip().partition("=")
        if name.strip().lower() == "timeout":
            with contextlib.suppress(ValueError, OverflowError):
                seconds = int(float(text.strip()))
                if seconds > 0:
                    timeout = seconds
    return session_id, timeout


def _request_url(url: str) -> str:
    """The URL as sent in requests: scheme rtsp(s), no userinfo (config strips it anyway)."""
    parts = urlsplit(url)
    scheme = parts.scheme if parts.scheme in ("rtsp", "rtsps") else "rtsp"
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((scheme, netloc, parts.path, parts.query, parts.fragment))


class _Interleaved:
    """SETUP's Transport for RTP and RTCP on channels 0-1 of the RTSP connection."""

    def request_header(self) -> str:
        return f"RTP/AVP/TCP;unicast;interleaved={RTP_CHANNEL}-{RTCP_CHANNEL}"

    def accept(self, transport: str) -> None:
        if "interleaved" not in transport:
            raise StreamError(f"camera refused TCP-interleaved transport (Transport: {transport[:80]!r})")
        channels = transport.split("interleaved=", 1)[1].split(";", 1)[0].strip()
        if channels != f"{RTP_CHANNEL}-{RTCP_CHANNEL}":
            raise StreamError(f"camera chose interleaved channels {channels}, expected 0-1")


class _Udp(_Interleaved):
    """SETUP's Transport for RTP/RTCP over UDP on the ports :class:`UdpMedia` bound."""

    def __init__(self, media: UdpMedia) -> None:
        self.media = media

    def request_header(self) -> str:
        return f"RTP/AVP;unicast;client_port={self.media.rtp_port}-{self.media.rtcp_port}"

    def accept(self, transport: str) -> None:
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
        self._conn: LeanConnection | None = None
        self._transport_name = transport
        self._udp_bind = udp_bind
        self._udp: UdpMedia | None = None
        self._base_url = _request_url(url)  # Content-Base once DESCRIBE gave one
        self._session_id: str | None = None
        self._public: frozenset[str] = frozenset()
        self.description: StreamDescription | None = None

    @property
    def _where(self) -> str:
        return f"{self.host}:{self.port}"

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

    async def _request(self, method: str, url: str, headers: dict[str, str] | None = None) -> RtspReply:
        assert self._conn is not None
        headers = dict(headers or {})
        if self._session_id is not None:
            headers["Session"] = self._session_id
        return await self._conn.request(method, url, headers)

    async def start(
        self, on_described: Callable[[StreamDescription], None] | None = None
    ) -> StreamDescription:
        """OPTIONS, DESCRIBE, SETUP, PLAY. Raises :class:`StreamError` (or :class:`AuthError`).

        ``on_described`` runs after SETUP and before PLAY is sent: whatever must be ready to
        take packets (the depacketizer for the described codec and payload type) is set up
        there, since media may follow PLAY's answer in the same TCP read.
        """
        conn = LeanConnection(
            self.host, self.port, self._username, self._password, self._on_packet, timeout=self._timeout
        )
        self._conn = conn
        url = _request_url(self.url)
        with rtsp_errors(self._where):
            await conn.open()
            shim = _Interleaved()
            if self._transport_name == "udp":
                self._udp = await UdpMedia.open(self._udp_bind, self.host, self._on_packet)
                shim = _Udp(self._udp)
            options = await self._request("OPTIONS", url)
            if "public" not in options.headers:
                raise StreamError(f"{self._where}: RTSP exchange failed (no Public header in OPTIONS)")
            self._public = frozenset(m.strip().upper() for m in options.header("public").split(","))
            described = await self._request("DESCRIBE", url, {"Accept": "application/sdp"})
            self._base_url = described.header("content-base") or url
            sdp = parse_description(described.body)
            setup_url = resolve_control(resolve_control(self._base_url, sdp.control), sdp.video.control)
            setup = await self._request("SETUP", setup_url, {"Transport": shim.request_header()})
            shim.accept(setup.header("transport"))
            self._session_id, timeout = parse_session_header(setup.header("session"))
            description = stream_description(sdp, timeout)
            self.description = description
            if on_described is not None:
                on_described(description)
            await self._request("PLAY", self._base_url, {"Scale": "1", "Range": "npt=now-"})
        return description

    async def keep_alive(self) -> None:
        """GET_PARAMETER, or OPTIONS when the camera's Public list lacks it (or nothing)."""
        if self._session_id is None or self._conn is None:
            return
        for method in ("GET_PARAMETER", "OPTIONS"):
            if method in self._public:
                with rtsp_errors(self._where):
                    await self._request(method, self._base_url)
                return

    @property
    def closed(self) -> asyncio.Future[Any]:
        """Resolves (or raises) when the connection ends."""
        assert self._conn is not None
        result: asyncio.Future[Any] = self._conn.result
        return result

    async def close(self) -> None:
        """TEARDOWN within a short bound, then close the socket. Never raises."""
        conn, session_id = self._conn, self._session_id
        if self._udp is not None:
            self._udp.close()
        if conn is None:
            return
        if session_id is not None and conn.running:
            with contextlib.suppress(*TEARDOWN_ERRORS):
                await asyncio.wait_for(self._request("TEARDOWN", self._base_url), TEARDOWN_TIMEOUT_SECONDS)
        self._session_id = None
        conn.finish()
