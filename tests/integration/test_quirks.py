"""Camera quirks that real firmwares show, each recorded without a reconnect or a lost frame.

The simulator plays the quirky camera; the recorder runs in the test's event loop.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from csud.store.index import Index
from tests.integration.inproc import make_recorder, running, simulator

pytestmark = pytest.mark.integration
SECRET = "quirk-Pa55"
FPS = 25


async def record(tmp_path: Path, seconds: float, password: str | None = None, **sim: Any) -> dict[str, Any]:
    """Record one simulated camera for ``seconds``; return what the camera and recorder saw.

    ``sim_password`` is the simulator's password (``password`` is the recorder's).
    """
    if "sim_password" in sim:
        sim["password"] = sim.pop("sim_password")
    async with simulator(**sim) as server:
        recorder = make_recorder(tmp_path, server.port, password=password)
        async with running(recorder):
            await asyncio.sleep(seconds)
            assert recorder.stats.up, recorder.stats.last_error
        stats = server.stats()
    rows = Index.open(tmp_path / "store" / "index.sqlite3", readonly=True).segments("cam1")
    return {
        "sim": stats,
        "sent": stats["cameras"]["cam1"]["frames_sent_from_first_keyframe"],
        "recorded": sum(r.frames for r in rows),
        "stats": recorder.stats,
    }


def assert_clean(result: dict[str, Any]) -> None:
    stats = result["stats"]
    assert stats.reconnects == 0 and stats.failures == 0, stats.last_error
    assert stats.lost_packets == 0 and stats.malformed_packets == 0
    # Frames still on the wire at TEARDOWN may be missing: at most the GOP in flight.
    assert result["sent"] - FPS <= result["recorded"] <= result["sent"], result


@pytest.mark.parametrize(
    ("control", "content_base"),
    [("relative", True), ("relative", False), ("absolute", True), ("star", True), ("star", False)],
)
async def test_control_urls(tmp_path: Path, control: str, content_base: bool) -> None:
    """a=control relative to Content-Base (or to the request URL without it), absolute, or '*'."""
    assert_clean(await record(tmp_path, 3, control=control, content_base=content_base))


async def test_payload_type_other_than_96(tmp_path: Path) -> None:
    result = await record(tmp_path, 3, payload_type=102)
    assert_clean(result)
    assert result["stats"].foreign_packets == 0


async def test_requests_from_the_camera_on_the_interleaved_connection(tmp_path: Path) -> None:
    """The camera sends GET_PARAMETER between media frames: answered, stream not desynchronised."""
    result = await record(tmp_path, 4, server_request_interval=0.5)
    assert result["sim"]["server_requests_sent"] >= 5
    # Every request was answered, but the last one may still be on the wire when the test stops.
    assert result["sim"]["server_requests_sent"] - 1 <= result["sim"]["client_responses"]
    assert_clean(result)


async def test_stale_digest_nonce_is_renewed_without_a_reconnect(tmp_path: Path) -> None:
    """Nonces expire after 1 s; keep-alives every 1 s meet 401 stale=TRUE and retry once."""
    result = await record(
        tmp_path,
        5,
        password=SECRET,
        username="csud",
        sim_password=SECRET,
        nonce_lifetime=1.0,
        session_timeout=2.0,
    )
    assert result["sim"]["stale_nonces"] >= 2
    assert_clean(result)
