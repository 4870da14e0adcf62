"""The contract between csud and aiortsp: what csud.rtsp.aiortsp_adapter relies on, asserted
against the installed aiortsp, so that an upgrade that changes it fails here, loudly, rather
than in the field. And the rule that makes the adapter the only place to look: aiortsp is
imported by exactly one module of csud, which uses neither aiortsp's SDP parser nor its session.

Driven without a socket: a fake transport records what the connection writes, and answers are
fed through ``data_received`` as a camera's bytes would be.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.metadata
import inspect
import re
from pathlib import Path
from typing import Any

import pytest
from aiortsp.rtsp import connection as aiortsp_connection
from aiortsp.rtsp.connection import RTSPConnection
from aiortsp.rtsp.errors import RTSPConnectionError, RTSPError, RTSPResponseError, RTSPTimeoutError
from aiortsp.rtsp.parser import RTSPParser

from csud.errors import AuthError, StreamError
from csud.rtsp import aiortsp_adapter
from csud.rtsp.aiortsp_adapter import AIORTSP_VERSION, LeanConnection, rtsp_errors

CSUD = Path(__file__).resolve().parents[2] / "csud"
PYPROJECT = CSUD.parent / "pyproject.toml"


class FakeTransport:
    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def connect(
    username: str | None = "csud", password: str | None = "pw"
) -> tuple[LeanConnection, FakeTransport]:
    packets: list[tuple[int, int]] = []
    conn = LeanConnection(
        "127.0.0.1", 554, username, password, lambda ch, b, s, e: packets.append((ch, e - s))
    )
    transport = FakeTransport()
    conn.connection_made(transport)
    return conn, transport


def sent_requests(transport: FakeTransport) -> list[str]:
    return [r for r in transport.written.decode().split("\r\n\r\n") if r]


def cseq_of(request: str) -> int:
    match = re.search(r"\bCSeq: (\d+)", request)
    assert match, request
    return int(match.group(1))


async def answered(conn: LeanConnection, transport: FakeTransport, answers: list[bytes]) -> Any:
    """Run ``conn.request("DESCRIBE", ...)``, answering each request it sends with the next answer."""
    task = asyncio.ensure_future(conn.request("DESCRIBE", "rtsp://127.0.0.1/cam1", {"Accept": "x"}))
    for n, answer in enumerate(answers):
        for _ in range(100):  # bounded: the request is written within a few loop turns
            await asyncio.sleep(0)
            if len(sent_requests(transport)) > n:
                break
        request = sent_requests(transport)[n]
        conn.data_received(answer.replace(b"CSeq: N", f"CSeq: {cseq_of(request)}".encode()))
    return await asyncio.wait_for(task, 1.0)


# -- the pin ------------------------------------------------------------------------------


def test_installed_aiortsp_is_the_pinned_version() -> None:
    assert importlib.metadata.version("aiortsp") == AIORTSP_VERSION
    pins = re.findall(r'"aiortsp==([0-9.]+)"', PYPROJECT.read_text())
    assert pins == [AIORTSP_VERSION], "pyproject.toml must pin aiortsp to the exact version tested here"


# -- the shape the adapter relies on ------------------------------------------------------


async def test_connection_constructor_and_public_state() -> None:
    params = inspect.signature(RTSPConnection.__init__).parameters
    assert list(params)[:5] == ["self", "host", "port", "username", "password"]
    assert "timeout" in params and "accept_auth" in params
    conn = RTSPConnection("127.0.0.1", 554, "u", "p", timeout=3)
    assert conn.default_timeout == 3
    assert conn.accept_auth == ["basic", "digest"]
    assert conn.active_requests == {}
    assert isinstance(conn.result, asyncio.Future) and not conn.result.done()
    assert conn.running is False
    for name in ("prepare", "close", "send_request", "send_response", "send_binary", "handle_401"):
        assert callable(getattr(RTSPConnection, name)), name
    assert issubclass(RTSPConnection, asyncio.Protocol)


def test_error_classes() -> None:
    for cls in (RTSPResponseError, RTSPConnectionError, RTSPTimeoutError):
        assert issubclass(cls, RTSPError)
    response = next(RTSPParser().parse(b"RTSP/1.0 404 Not Found\r\nCSeq: 1\r\n\r\n"))
    error = RTSPResponseError("x", response)
    assert (error.response.status, error.response.status_msg) == (404, "Not Found")


def test_parser_reads_one_whole_message_at_a_time() -> None:
    """The adapter hands the parser whole messages (the demux cut them) and reads these fields."""
    parser = RTSPParser()
    body = b"v=0\r\n"
    (reply,) = parser.parse(
        b"RTSP/1.0 200 OK\r\nCSeq: 7\r\nContent-Base: rtsp://c/s/\r\nContent-Length: 5\r\n\r\n" + body
    )
    assert (reply.type, reply.cseq, reply.status, reply.status_msg) == ("response", 7, 200, "OK")
    assert reply.headers["content-base"] == "rtsp://c/s/" and reply.data == body
    (request,) = parser.parse(b"GET_PARAMETER rtsp://c RTSP/1.0\r\nCSeq: 9\r\nSession: 5\r\n\r\n")
    assert (request.type, request.cseq, request.headers["session"]) == ("request", 9, "5")
    (repeated,) = parser.parse(
        b"RTSP/1.0 401 U\r\nCSeq: 2\r\nWWW-Authenticate: A\r\nWWW-Authenticate: B\r\n\r\n"
    )
    assert repeated.headers["www-authenticate"] == ["A", "B"]  # a repeated header becomes a list


# -- the behaviour the adapter relies on --------------------------------------------------


async def test_send_request_registers_a_future_per_cseq_and_returns_the_answer() -> None:
    conn, transport = connect()
    task = asyncio.ensure_future(conn.send_request("OPTIONS", "rtsp://c/s", {}))
    await asyncio.sleep(0)
    (cseq,) = conn.active_requests  # the adapter resolves these futures itself
    assert isinstance(conn.active_requests[cseq], asyncio.Future)
    assert sent_requests(transport)[0].startswith("OPTIONS rtsp://c/s RTSP/1.0\r\n")
    conn.data_received(f"RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\nPublic: OPTIONS\r\n\r\n".encode())
    reply = await asyncio.wait_for(task, 1.0)
    assert reply.status == 200 and conn.active_requests == {}  # popped when answered


async def test_non_2xx_raises_response_error_and_silence_a_timeout() -> None:
    conn, transport = connect()
    with pytest.raises(RTSPResponseError) as info:
        await answered(conn, transport, [b"RTSP/1.0 454 Session Not Found\r\nCSeq: N\r\n\r\n"])
    assert info.value.response.status == 454
    with pytest.raises(RTSPTimeoutError):
        await conn.send_request("OPTIONS", "rtsp://c/s", {}, timeout=0.01)


async def test_unreachable_host_is_a_connection_error() -> None:
    from tests.integration.helpers import free_port

    conn = RTSPConnection("127.0.0.1", free_port(), timeout=2)
    with pytest.raises(RTSPConnectionError):
        await conn.prepare()


async def test_basic_is_what_aiortsp_picks_when_both_are_offered() -> None:
    """The reason the adapter filters the offers: without it, Basic (the password in clear)."""
    plain = RTSPConnection("127.0.0.1", 554, "csud", "pw")
    transport = FakeTransport()
    plain.connection_made(transport)
    both = b'WWW-Authenticate: Basic realm="r"\r\nWWW-Authenticate: Digest realm="r", nonce="n"\r\n'
    task = asyncio.ensure_future(plain.send_request("DESCRIBE", "rtsp://c/s", {}))
    await asyncio.sleep(0)
    (cseq,) = plain.active_requests
    plain.data_received(b"RTSP/1.0 401 Unauthorized\r\nCSeq: %d\r\n" % cseq + both + b"\r\n")
    for _ in range(100):  # bounded: the retry is written within a few loop turns
        await asyncio.sleep(0)
        if len(sent_requests(transport)) > 1:
            break
    assert "Authorization: Basic " in sent_requests(transport)[1]
    task.cancel()


async def test_adapter_answers_the_challenge_with_digest_and_once_only() -> None:
    conn, transport = connect()
    both = b'WWW-Authenticate: Basic realm="r"\r\nWWW-Authenticate: Digest realm="r", nonce="n1"\r\n'
    reply = await answered(
        conn,
        transport,
        [b"RTSP/1.0 401 Unauthorized\r\nCSeq: N\r\n" + both + b"\r\n", b"RTSP/1.0 200 OK\r\nCSeq: N\r\n\r\n"],
    )
    assert reply.status == 200
    requests = sent_requests(transport)
    assert "Authorization" not in requests[0]
    assert (
        'Authorization: Digest username="csud", realm="r", nonce="n1", uri="rtsp://127.0.0.1/cam1"'
        in (requests[1])
    )
    assert "pw" not in transport.written.decode()
    # Wrong credentials: the second 401 in a row is final (aiortsp's Auth.max_retry is 1).
    conn, transport = connect()
    with pytest.raises(RTSPResponseError) as info:
        await answered(
            conn,
            transport,
            [b"RTSP/1.0 401 Unauthorized\r\nCSeq: N\r\n" + both + b"\r\n"] * 2,
        )
    assert info.value.response.status == 401 and len(sent_requests(transport)) == 2


async def test_basic_only_camera_still_gets_basic() -> None:
    conn, transport = connect()
    await answered(
        conn,
        transport,
        [
            b'RTSP/1.0 401 Unauthorized\r\nCSeq: N\r\nWWW-Authenticate: Basic realm="r"\r\n\r\n',
            b"RTSP/1.0 200 OK\r\nCSeq: N\r\n\r\n",
        ],
    )
    assert "Authorization: Basic Y3N1ZDpwdw==" in sent_requests(transport)[1]


async def test_digest_nextnonce_is_used_for_the_next_request() -> None:
    conn, transport = connect()
    await answered(
        conn,
        transport,
        [
            b'RTSP/1.0 401 Unauthorized\r\nCSeq: N\r\nWWW-Authenticate: Digest realm="r", nonce="n1"\r\n\r\n',
            b'RTSP/1.0 200 OK\r\nCSeq: N\r\nAuthentication-Info: nextnonce="n2"\r\n\r\n',
        ],
    )
    task = asyncio.ensure_future(conn.request("OPTIONS", "rtsp://c/s"))
    await asyncio.sleep(0)
    assert 'nonce="n2"' in sent_requests(transport)[2]
    task.cancel()


async def test_send_binary_and_send_response_frames() -> None:
    conn, transport = connect()
    conn.send_binary(1, b"\x81\xc9\x00\x01abcd")
    assert bytes(transport.written) == b"$\x01\x00\x08\x81\xc9\x00\x01abcd"
    transport.written.clear()
    conn.data_received(b"GET_PARAMETER rtsp://c RTSP/1.0\r\nCSeq: 41\r\nSession: 7\r\n\r\n")
    answer = transport.written.decode()
    assert answer.startswith("RTSP/1.0 200 OK\r\nCSeq: 41\r\n") and "Session: 7" in answer


async def test_connection_lost_resolves_result_and_fails_pending_requests() -> None:
    conn, _ = connect()
    loop = asyncio.get_running_loop()
    pending: asyncio.Future[Any] = loop.create_future()
    conn.active_requests[1] = pending
    conn.connection_lost(OSError("reset"))
    assert conn.running is False
    assert isinstance(conn.result.exception(), RTSPConnectionError)
    assert isinstance(pending.exception(), RTSPConnectionError)


async def test_close_closes_the_transport_given_by_connection_made() -> None:
    conn, transport = connect()
    assert conn.running
    conn.close()
    assert transport.closed


def test_errors_become_csud_errors_without_the_message() -> None:
    response = next(RTSPParser().parse(b"RTSP/1.0 401 Unauthorized\r\nCSeq: 1\r\n\r\n"))
    refused = r"^cam:554 refused the credentials \(401 Unauthorized\)$"
    with pytest.raises(AuthError, match=refused), rtsp_errors("cam:554"):
        raise RTSPResponseError("rtsp://u:secret@cam", response)
    for error, message in [
        (RTSPTimeoutError("x"), "cam:554 did not answer within the request timeout"),
        (RTSPConnectionError("x"), "cannot connect to cam:554"),
        (AssertionError("secret"), "cam:554: RTSP exchange failed (AssertionError)"),
    ]:
        with pytest.raises(StreamError) as info, rtsp_errors("cam:554"):
            raise error
        assert str(info.value) == message


# -- one adapter ----------------------------------------------------------------------------


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any level (functions and TYPE_CHECKING blocks included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_aiortsp_is_imported_by_exactly_one_module() -> None:
    importers = sorted(
        str(path.relative_to(CSUD.parent))
        for path in CSUD.rglob("*.py")
        if any(name == "aiortsp" or name.startswith("aiortsp.") for name in _imports(path))
    )
    assert importers == ["csud/rtsp/aiortsp_adapter.py"]
    used = {n for n in _imports(CSUD / "rtsp" / "aiortsp_adapter.py") if n.startswith("aiortsp")}
    # Not aiortsp's SDP parser (csud.rtsp.sdp is the one in use, and fuzzed) nor its session.
    assert used == {"aiortsp.rtsp.connection", "aiortsp.rtsp.errors", "aiortsp.rtsp.parser"}


def test_the_adapter_touches_no_private_attribute_of_aiortsp() -> None:
    source = inspect.getsource(aiortsp_adapter)
    private = set(re.findall(r"\bself\.(_[a-z]\w*)", source)) | set(
        re.findall(r"\bsuper\(\)\.(_[a-z]\w*)", source)
    )
    own = {"_messages", "_on_message", "_fail"}  # the adapter's own
    aiortsp_private = {n for n in re.findall(r"self\.(_\w+)", inspect.getsource(aiortsp_connection))}
    assert private <= own, private - own
    assert not own & aiortsp_private, "an adapter attribute now shadows one of aiortsp's"
