"""Server side of RTSP/1.0 for the simulator: a request parser fed raw TCP bytes, and auth.

Pure (no I/O, no clock; nonces come from the caller). :class:`RequestReader` takes the bytes
of one connection as they arrive, whole or one byte at a time, and yields complete requests
(headers and ``Content-Length`` body) and the interleaved ``$`` frames a client sends (RTCP
receiver reports), in order. Input that cannot be an RTSP request raises
:class:`MalformedRequest`: the connection answers 400 and closes; other connections never
notice.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Container
from dataclasses import dataclass, field

INTERLEAVED_MAGIC = 0x24  # "$"
INTERLEAVED_HEADER_SIZE = 4
HEADER_END = b"\r\n\r\n"
MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024
RTSP_VERSION = "RTSP/1.0"
_TOKEN = re.compile(r"^[A-Z][A-Z_-]{0,31}$")
_PRINTABLE = frozenset(range(0x20, 0x7F)) | {0x09}

REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    454: "Session Not Found",
    455: "Method Not Valid in This State",
    459: "Aggregate Operation Not Allowed",
    461: "Unsupported Transport",
    500: "Internal Server Error",
    501: "Not Implemented",
    505: "RTSP Version Not Supported",
}


class MalformedRequest(ValueError):
    """The bytes are not RTSP: answer 400 and close the connection."""


@dataclass(slots=True)
class Request:
    method: str
    uri: str
    version: str
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value
    body: bytes = b""

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)


@dataclass(slots=True, frozen=True)
class InterleavedFrame:
    channel: int
    data: bytes


@dataclass(slots=True)
class RequestReader:
    """Incremental parser of what an RTSP client sends to the server."""

    max_header_bytes: int = MAX_HEADER_BYTES
    _buf: bytearray = field(default_factory=bytearray)

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Request | InterleavedFrame]:
        """Add ``data``; return every complete item. Raises :class:`MalformedRequest`."""
        buf = self._buf
        buf += data
        out: list[Request | InterleavedFrame] = []
        while buf:
            first = buf[0]
            if first == INTERLEAVED_MAGIC:
                if len(buf) < INTERLEAVED_HEADER_SIZE:
                    break
                length = int.from_bytes(buf[2:4], "big")
                end = INTERLEAVED_HEADER_SIZE + length
                if len(buf) < end:
                    break
                out.append(InterleavedFrame(buf[1], bytes(buf[INTERLEAVED_HEADER_SIZE:end])))
                del buf[:end]
                continue
            if first in (0x0D, 0x0A):  # stray CRLF between messages (RFC 2326 allows it)
                del buf[:1]
                continue
            if not 0x41 <= first <= 0x5A:  # a method starts with an upper-case letter
                raise MalformedRequest(f"unexpected byte 0x{first:02x} where a request starts")
            end = buf.find(HEADER_END)
            head_len = end if end >= 0 else len(buf)
            line_end = buf.find(b"\r\n", 0, head_len + 2)
            first_line = buf[: line_end if line_end >= 0 else head_len].rstrip(b"\r")
            if any(b not in _PRINTABLE for b in first_line[:256]):
                raise MalformedRequest("request line holds non-printable bytes")
            if end < 0:
                if len(buf) > self.max_header_bytes:
                    raise MalformedRequest(f"request headers exceed {self.max_header_bytes} bytes")
                break
            head = bytes(buf[:end])
            request = _parse_head(head)
            length = _content_length(request)
            total = end + len(HEADER_END) + length
            if len(buf) < total:
                break
            request.body = bytes(buf[end + len(HEADER_END) : total])
            del buf[:total]
            out.append(request)
        return out


def _parse_head(head: bytes) -> Request:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedRequest("request headers are not UTF-8") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if parts[0].startswith("RTSP/") and len(parts) >= 3 and parts[1].isdigit():  # reason may hold spaces
        # A client's response to a request of ours: kept as a Request whose "method" is the
        # version, for the server to count and otherwise ignore.
        pass
    elif len(parts) != 3 or not _TOKEN.match(parts[0]) or not parts[1] or not parts[2].startswith("RTSP/"):
        raise MalformedRequest(f"bad request line {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name.strip() or name != name.strip():
            raise MalformedRequest(f"bad header line {line[:80]!r}")
        if any(ord(c) < 0x20 and c != "\t" for c in line):
            raise MalformedRequest("header holds control characters")
        headers[name.lower()] = value.strip()
    return Request(parts[0], parts[1], parts[2], headers)


def _content_length(request: Request) -> int:
    value = request.header("content-length")
    if value is None:
        return 0
    if not value.isdigit():
        raise MalformedRequest(f"bad Content-Length {value[:20]!r}")
    length = int(value)
    if length > MAX_BODY_BYTES:
        raise MalformedRequest(f"Content-Length {length} exceeds {MAX_BODY_BYTES}")
    return length


def format_response(
    status: int, cseq: str | None, headers: list[tuple[str, str]] | None = None, body: bytes = b""
) -> bytes:
    lines = [f"{RTSP_VERSION} {status} {REASONS.get(status, 'Error')}"]
    if cseq is not None:
        lines.append(f"CSeq: {cseq}")
    lines.append("Server: csud-sim")
    lines.extend(f"{name}: {value}" for name, value in headers or ())
    if body or status == 200:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# --- Transport header ----------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class TransportRequest:
    tcp: bool
    interleaved: tuple[int, int] | None  # None: the client let the server choose
    client_port: tuple[int, int] | None = None  # UDP: where the client receives RTP and RTCP


def parse_transport(value: str) -> list[TransportRequest]:
    """Every transport spec of a Transport header, in the client's order of preference."""
    out = []
    for spec in value.split(","):
        params = [p.strip() for p in spec.split(";") if p.strip()]
        if not params:
            continue
        proto = params[0].upper()
        if proto not in ("RTP/AVP", "RTP/AVP/UDP", "RTP/AVP/TCP"):
            continue
        interleaved = None
        client_port = None
        for param in params[1:]:
            name, _, arg = param.partition("=")
            if name.lower() == "client_port":
                lo, _, hi = arg.partition("-")
                try:
                    a = int(lo)
                    b = int(hi) if hi else a + 1
                except ValueError:
                    raise ValueError(f"bad client_port {arg!r}") from None
                if not (0 < a < 65536 and 0 < b < 65536):
                    raise ValueError(f"client_port {arg!r} out of range")
                client_port = (a, b)
            if name.lower() == "interleaved":
                lo, _, hi = arg.partition("-")
                try:
                    a = int(lo)
                    b = int(hi) if hi else a + 1
                except ValueError:
                    raise ValueError(f"bad interleaved channels {arg!r}") from None
                if not (0 <= a <= 255 and 0 <= b <= 255):
                    raise ValueError(f"interleaved channels {arg!r} out of range")
                interleaved = (a, b)
        out.append(TransportRequest(proto == "RTP/AVP/TCP", interleaved, client_port))
    return out


# --- Authentication (RFC 2617 Digest with MD5, with or without qop=auth; Basic) --------

REALM = "csud-sim"
_AUTH_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def digest_response(
    username: str,
    password: str,
    realm: str,
    nonce: str,
    method: str,
    uri: str,
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
) -> str:
    """The ``response`` value of RFC 2617 Digest with MD5 (shared by the server and tests)."""
    ha1 = _md5(f"{username}:{realm}:{password}")
    ha2 = _md5(f"{method}:{uri}")
    if qop:
        return _md5(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return _md5(f"{ha1}:{nonce}:{ha2}")


def parse_auth_params(value: str) -> dict[str, str]:
    return {
        m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
        for m in _AUTH_PARAM.finditer(value)
    }


def digest_challenge(nonce: str, qop: bool, stale: bool = False) -> str:
    challenge = f'Digest realm="{REALM}", nonce="{nonce}"'
    if stale:  # RFC 2617: the answer was right but the nonce expired; retry with the new one
        challenge += ", stale=TRUE"
    return challenge + ', qop="auth"' if qop else challenge


def basic_challenge() -> str:
    return f'Basic realm="{REALM}"'


def check_basic(header: str, username: str, password: str) -> bool:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return False
    user, sep, pw = decoded.partition(":")
    ok_user = hmac.compare_digest(user.encode(), username.encode())
    ok_pw = hmac.compare_digest(pw.encode(), password.encode())
    return bool(sep) and ok_user and ok_pw


def check_digest(header: str, method: str, username: str, password: str, nonces: Container[str]) -> bool:
    """True when ``header`` is a valid Digest answer for ``method`` to one of our nonces.

    The digest is computed over the ``uri`` the client put in the header (clients differ on
    absolute versus relative URIs; the response binds whichever they chose).
    """
    scheme, _, rest = header.partition(" ")
    if scheme.lower() != "digest":
        return False
    p = parse_auth_params(rest)
    required = ("username", "realm", "nonce", "uri", "response")
    if any(k not in p for k in required):
        return False
    if p["realm"] != REALM or p["nonce"] not in nonces:
        return False
    if not hmac.compare_digest(p["username"].encode(), username.encode()):
        return False
    qop = p.get("qop")
    if qop is not None and (qop.lower() != "auth" or "nc" not in p or "cnonce" not in p):
        return False
    expected = digest_response(
        username, password, REALM, p["nonce"], method, p["uri"], qop, p.get("nc"), p.get("cnonce")
    )
    return hmac.compare_digest(expected.encode(), p["response"].lower().encode())
