"""RTP and RTCP over UDP for one camera session: two sockets on consecutive ports.

The RTP socket takes an even port and RTCP the next one (RFC 3550 §11), both bound on the
configured address. Datagrams from any host but the camera's are dropped and counted: on an
open port anyone can send, and only the camera may write footage. RTP goes through a small
reorder window (:class:`~csud.media.reorder.ReorderBuffer`) before the recorder's packet
handler, which gets the same ``(channel, buffer, start, end)`` calls as over TCP.
"""

from __future__ import annotations

import asyncio
import errno
import random
import socket
from typing import Any

from csud.errors import StreamError
from csud.media.reorder import DEFAULT_WINDOW, ReorderBuffer

RTP_CHANNEL = 0
RTCP_CHANNEL = 1
RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024  # a 1080p keyframe arrives as a burst of ~200 datagrams
PORT_ATTEMPTS = 64
DEFAULT_PORT_RANGE = (40000, 59998)


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self, media: UdpMedia, channel: int) -> None:
        self.media = media
        self.channel = channel
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        media = self.media
        if addr[0] != media.camera_ip:
            media.foreign_datagrams += 1
            return
        media.bytes_received += len(data)
        if self.channel == RTP_CHANNEL:
            media.reorder.push(data)
        else:
            media.on_packet(RTCP_CHANNEL, data, 0, len(data))

    def error_received(self, exc: Exception) -> None:  # ICMP errors: counted, not fatal
        self.media.socket_errors += 1


class UdpMedia:
    """The two sockets of one session. Open with :meth:`open`; always :meth:`close`."""

    def __init__(self, camera_ip: str, on_packet: Any, reorder_window: int) -> None:
        self.camera_ip = camera_ip
        self.on_packet = on_packet
        self.reorder = ReorderBuffer(self._emit_rtp, reorder_window)
        self.rtp_port = 0
        self.rtcp_port = 0
        self.server_rtcp_port = 0
        self.foreign_datagrams = 0
        self.socket_errors = 0
        self.bytes_received = 0
        self._rtp: asyncio.DatagramTransport | None = None
        self._rtcp: asyncio.DatagramTransport | None = None

    def _emit_rtp(self, data: bytes) -> None:
        self.on_packet(RTP_CHANNEL, data, 0, len(data))

    @classmethod
    async def open(
        cls,
        bind_host: str,
        camera_host: str,
        on_packet: Any,
        reorder_window: int = DEFAULT_WINDOW,
        port_range: tuple[int, int] = DEFAULT_PORT_RANGE,
        rng: random.Random | None = None,
    ) -> UdpMedia:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(camera_host, None, type=socket.SOCK_DGRAM)
        except OSError:
            raise StreamError(f"cannot resolve camera host {camera_host!r}") from None
        family = infos[0][0]
        media = cls(str(infos[0][4][0]), on_packet, reorder_window)
        rng = rng or random.Random()
        low, high = port_range
        for _ in range(PORT_ATTEMPTS):
            port = rng.randrange(low, high + 1) & ~1
            try:
                media._rtp = await media._bind(loop, family, bind_host, port, RTP_CHANNEL)
                try:
                    media._rtcp = await media._bind(loop, family, bind_host, port + 1, RTCP_CHANNEL)
                except OSError:
                    media._rtp.close()
                    media._rtp = None
                    raise
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    continue
                raise StreamError(f"cannot bind UDP on {bind_host}: {exc.strerror}") from None
            media.rtp_port, media.rtcp_port = port, port + 1
            return media
        raise StreamError(f"no free UDP port pair in {low}-{high} on {bind_host}")

    async def _bind(
        self, loop: asyncio.AbstractEventLoop, family: int, host: str, port: int, channel: int
    ) -> asyncio.DatagramTransport:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        transport, _ = await loop.create_datagram_endpoint(lambda: _Receiver(self, channel), sock=sock)
        return transport

    def send_rtcp(self, data: bytes) -> None:
        if self._rtcp is not None and self.server_rtcp_port:
            self._rtcp.sendto(data, (self.camera_ip, self.server_rtcp_port))

    def close(self) -> None:
        self.reorder.flush()
        for transport in (self._rtp, self._rtcp):
            if transport is not None:
                transport.close()
        self._rtp = self._rtcp = None
