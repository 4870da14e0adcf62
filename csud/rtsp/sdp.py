"""The slice of SDP (RFC 8866) that an RTSP DESCRIBE answer gives csud.

What belongs here: media lines with their payload type, ``rtpmap`` (encoding, clock rate),
``fmtp`` parameters, ``control`` attribute, the H.264 ``sprop-parameter-sets`` and H.265
``sprop-vps/sps/pps`` decoded, and the resolution of control URLs (RFC 2326 §C.1.1).
What does not: offer/answer, ICE, timing/bandwidth lines, anything that sends bytes.

Every malformed input that matters to csud raises ``ValueError`` with an exact message;
lines csud does not use are ignored, as cameras put all sorts of things in them.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from urllib.parse import urlsplit

# Static payload types (RFC 3551) that a camera may use without an rtpmap line.
STATIC_PAYLOAD_TYPES: dict[int, tuple[str, int]] = {
    0: ("PCMU", 8000),
    8: ("PCMA", 8000),
    26: ("JPEG", 90000),
    32: ("MPV", 90000),
    33: ("MP2T", 90000),
    34: ("H263", 90000),
}
VIDEO_ENCODINGS = frozenset({"H264", "H265"})
MAX_PAYLOAD_TYPE = 127


@dataclass(slots=True)
class MediaDescription:
    """One ``m=`` section, described by its first payload type.

    ``encoding_name`` is upper-case (``"H264"``); ``fmtp`` keys are lower-case. Parameter
    sets are decoded NAL units without start codes (empty lists when absent).
    """

    media: str
    port: int
    protocol: str
    payload_type: int
    encoding_name: str = ""
    clock_rate: int = 0
    encoding_params: str = ""
    control: str | None = None
    fmtp: dict[str, str] = field(default_factory=dict)
    sprop_parameter_sets: list[bytes] = field(default_factory=list)
    sprop_vps: list[bytes] = field(default_factory=list)
    sprop_sps: list[bytes] = field(default_factory=list)
    sprop_pps: list[bytes] = field(default_factory=list)

    @property
    def parameter_sets(self) -> list[bytes]:
        """All out-of-band parameter sets in decoding order (VPS, SPS, PPS for H.265)."""
        return self.sprop_parameter_sets + self.sprop_vps + self.sprop_sps + self.sprop_pps


@dataclass(slots=True)
class SessionDescription:
    """A parsed SDP: session-level ``control`` and name, and the media sections in order."""

    session_name: str = ""
    control: str | None = None
    media: list[MediaDescription] = field(default_factory=list)

    @property
    def video(self) -> MediaDescription:
        """The first H.264/H.265 video media (``parse_sdp`` guarantees there is one)."""
        for m in self.media:
            if m.media == "video" and m.encoding_name in VIDEO_ENCODINGS:
                return m
        raise ValueError("SDP has no H.264/H.265 video media")


def decode_sprop(name: str, value: str) -> list[bytes]:
    """Comma-separated base64 NAL units (padding optional, as some cameras omit it)."""
    out = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            nal = base64.b64decode(item + "=" * (-len(item) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"bad base64 in {name}: {item!r}") from None
        if not nal:
            raise ValueError(f"bad base64 in {name}: {item!r}")
        out.append(nal)
    return out


def _parse_fmtp(value: str) -> tuple[int, dict[str, str]]:
    pt_text, _, params_text = value.partition(" ")
    if not pt_text.isdigit():
        raise ValueError(f"bad fmtp attribute: {value!r}")
    params: dict[str, str] = {}
    for part in params_text.split(";"):
        key, sep, val = part.strip().partition("=")
        if key:
            params[key.strip().lower()] = val.strip() if sep else ""
    return int(pt_text), params


def _parse_rtpmap(value: str) -> tuple[int, str, int, str]:
    pt_text, _, encoding = value.strip().partition(" ")
    fields = encoding.strip().split("/")
    if not pt_text.isdigit() or len(fields) < 2 or not fields[0] or not fields[1].isdigit():
        raise ValueError(f"bad rtpmap attribute: {value!r}")
    clock_rate = int(fields[1])
    if clock_rate <= 0:
        raise ValueError(f"bad rtpmap attribute: {value!r}")
    return int(pt_text), fields[0].upper(), clock_rate, "/".join(fields[2:])


def _parse_media(value: str, number: int) -> MediaDescription:
    fields = value.split()
    if len(fields) < 4 or not fields[1].split("/")[0].isdigit() or not fields[3].isdigit():
        raise ValueError(f"bad media line {number}: {value!r}")
    payload_type = int(fields[3])
    if payload_type > MAX_PAYLOAD_TYPE:
        raise ValueError(f"bad media line {number}: {value!r}")
    media = MediaDescription(
        media=fields[0], port=int(fields[1].split("/")[0]), protocol=fields[2], payload_type=payload_type
    )
    if payload_type in STATIC_PAYLOAD_TYPES:
        media.encoding_name, media.clock_rate = STATIC_PAYLOAD_TYPES[payload_type]
    return media


def _read_format(media: MediaDescription, name: str, value: str) -> None:
    """An ``rtpmap`` or ``fmtp`` attribute, kept when it is for the media's payload type."""
    if name == "rtpmap":
        pt, encoding, clock_rate, encoding_params = _parse_rtpmap(value)
        if pt == media.payload_type:
            media.encoding_name = encoding
            media.clock_rate = clock_rate
            media.encoding_params = encoding_params
    else:
        pt, fmtp_params = _parse_fmtp(value)
        if pt == media.payload_type:
            media.fmtp = fmtp_params


def parse_sdp(text: str) -> SessionDescription:
    """Parse an SDP document; ``ValueError`` on malformed lines, on a bad ``rtpmap``/``fmtp``
    in a video media (elsewhere they are ignored), on bad base64 parameter sets, and when no H.264/H.265 video
    media is present (csud records nothing else)."""
    session = SessionDescription()
    current: MediaDescription | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if len(line) < 2 or line[1] != "=" or not line[0].isalpha():
            raise ValueError(f"bad SDP line {number}: {raw!r}")
        kind, value = line[0], line[2:]
        if kind == "m":
            current = _parse_media(value, number)
            session.media.append(current)
        elif kind == "s" and current is None:
            session.session_name = value
        elif kind == "a":
            name, _, attr = value.partition(":")
            if name == "control":
                if current is None:
                    session.control = attr.strip()
                else:
                    current.control = attr.strip()
            elif current is None:
                continue
            elif name in ("rtpmap", "fmtp"):
                try:
                    _read_format(current, name, attr)
                except ValueError:
                    if current.media == "video":
                        raise
                    # Audio and metadata tracks are not recorded: their oddities are not ours.
    for media in session.media:
        fmtp = media.fmtp
        if media.encoding_name == "H264" and "sprop-parameter-sets" in fmtp:
            media.sprop_parameter_sets = decode_sprop("sprop-parameter-sets", fmtp["sprop-parameter-sets"])
        elif media.encoding_name == "H265":
            for key, attr in (
                ("sprop-vps", "sprop_vps"),
                ("sprop-sps", "sprop_sps"),
                ("sprop-pps", "sprop_pps"),
            ):
                if key in fmtp:
                    setattr(media, attr, decode_sprop(key, fmtp[key]))
    if not any(m.media == "video" and m.encoding_name in VIDEO_ENCODINGS for m in session.media):
        raise ValueError("SDP has no video media")
    return session


def resolve_control(base_url: str, control: str | None) -> str:
    """The absolute URL for a ``control`` attribute, relative to ``base_url``.

    ``base_url`` is the DESCRIBE answer's Content-Base (or Content-Location, or the request
    URL). ``None``, empty and ``*`` mean the base itself; an absolute URL is kept; a path
    starting with ``/`` replaces the base's path; anything else is appended to the base
    after a ``/``, as ffmpeg and live555 do (``rtsp://cam/stream1`` + ``trackID=1`` ->
    ``rtsp://cam/stream1/trackID=1``; plain RFC 3986 joining would drop ``stream1``).
    """
    if control is None or control in ("", "*"):
        return base_url
    if urlsplit(control).scheme:
        return control
    base = urlsplit(base_url)
    if not base.scheme or not base.netloc:
        raise ValueError("base URL is not absolute")  # never echo it: it may hold credentials
    if control.startswith("/"):
        return f"{base.scheme}://{base.netloc}{control}"
    return base_url + control if base_url.endswith("/") else f"{base_url}/{control}"
