"""What a simulator is asked to be: :class:`SimOptions`, and the hook types faults plug into.

Imported by every other simulator module and importing none of them but the pure ones
(clip parameters, packets, the RTSP request type): the hooks name a session and a
connection as ``Any`` for that reason (they are :class:`csud.sim.session.Session` and
:class:`csud.sim.protocol.RtspConnection`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from csud.sim.clip import ClipParams
from csud.sim.packets import DEFAULT_MTU_PAYLOAD, PAYLOAD_TYPE, PacketizedFrame
from csud.sim.rtsp import Request

MAX_WRITE_BUFFER = 8 * 1024 * 1024

Reply = tuple[int, list[tuple[str, str]], bytes]  # status, headers, body
# (session, frame, wire bytes) -> the bytes to send, or None to drop the frame.
FrameHook = Callable[[Any, PacketizedFrame, bytearray], "bytes | bytearray | None"]
# Fault hooks (csud.sim.faults): answer a request instead of the server; send a response otherwise.
RequestHook = Callable[[Any, Request], "Reply | None"]
ResponseHook = Callable[[Any, Request, bytes], bool]  # True: the hook sent it


class FaultPlan(Protocol):
    """What :func:`csud.sim.server.serve` asks of ``SimOptions.faults`` (a ``FaultInjector``)."""

    async def prepare(self, options: SimOptions) -> None:
        """Install the hooks in ``options``; called before the server starts."""

    def close(self) -> None:
        """Stop whatever the faults still run; called when the server closes."""


@dataclass(slots=True)
class SimOptions:
    cameras: int = 1
    port: int = 8554  # 0: any free port (read it back from SimServer.port)
    host: str = "127.0.0.1"
    fps: int = 25
    bitrate: int = 4_000_000  # bit/s
    gop_seconds: float = 1.0
    width: int = 1280
    height: int = 720
    username: str | None = None  # auth is on when both username and password are set
    password: str | None = field(default=None, repr=False)
    auth: Literal["digest", "basic"] = "digest"
    digest_qop: bool = False  # advertise qop="auth" in the Digest challenge
    inband_parameter_sets: bool = True  # False: SPS/PPS only in the SDP
    session_timeout: float = 60.0  # seconds without a request before a session is torn down
    sr_interval: float = 5.0  # seconds between RTCP sender reports, per session
    max_write_buffer: int = MAX_WRITE_BUFFER  # per connection; beyond it frames are dropped
    socket_send_buffer: int | None = None  # SO_SNDBUF of client sockets (None: the kernel's)
    stats_file: Path | None = None
    stats_interval: float = 1.0
    mtu_payload: int = DEFAULT_MTU_PAYLOAD
    stagger_cameras: bool = True  # each camera starts at its own clip position
    play_from_keyframe: bool = False  # hold a new session's first frame until a keyframe is due
    clip_cache_dir: Path | None = None
    use_clip_cache: bool = True
    frame_hook: FrameHook | None = field(default=None, repr=False)
    request_hook: RequestHook | None = field(default=None, repr=False)
    response_hook: ResponseHook | None = field(default=None, repr=False)
    faults: FaultPlan | None = field(default=None, repr=False)  # installs the three hooks
    # Camera quirks, for the recorder's tests:
    payload_type: int = PAYLOAD_TYPE  # dynamic payload type in the SDP and the RTP headers
    control: Literal["relative", "absolute", "star"] = "relative"  # the media's a=control
    content_base: bool = True  # send Content-Base with DESCRIBE
    nonce_lifetime: float | None = None  # Digest nonces expire (401 stale=TRUE) after this
    server_request_interval: float | None = None  # send GET_PARAMETER to playing clients

    @property
    def auth_enabled(self) -> bool:
        return self.username is not None and self.password is not None

    def clip_params(self) -> ClipParams:
        return ClipParams(
            width=self.width,
            height=self.height,
            fps=self.fps,
            bitrate=self.bitrate,
            gop_seconds=self.gop_seconds,
        )
