"""The pure core does no I/O and reads no clock: time is passed in.

Purity is a property of a module, not of a folder: the list below names every pure module, and
the layout is organised by domain (docs/architecture.md).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "csud"
PURE_MODULES = [
    "media/bits.py",
    "media/codec.py",
    "media/depacketizer.py",
    "media/h264.py",
    "media/h265.py",
    "media/reorder.py",
    "media/rtcp.py",
    "media/rtp.py",
    "media/units.py",
    "rtsp/interleave.py",
    "rtsp/sdp.py",
    "recording/budget.py",
    "recording/pipeline.py",
    "recording/segmenter.py",
    "recording/stats.py",
    "recording/timeline.py",
    "store/layout.py",
    "store/retention_plan.py",
    "store/scan.py",
    "evidence/clip.py",
    "evidence/manifest.py",
    "cluster/placement.py",
    "sim/rtsp.py",
    "live/fmp4.py",
]
PURE = [PACKAGE / name for name in PURE_MODULES]
FORBIDDEN = {
    "asyncio",
    "av",
    "aiortsp",
    "aiofiles",
    "time",
    "socket",
    "os",
    "shutil",
    "sqlite3",
    "datetime",
    "random",
}
# layout.py turns UTC nanoseconds into path names: datetime arithmetic, never the clock.
ALLOWED = {"layout.py": {"datetime"}, "manifest.py": {"datetime"}}


@pytest.mark.parametrize("path", PURE, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_pure_modules_import_no_io_and_no_clock(path: Path) -> None:
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not (imported & FORBIDDEN) - ALLOWED.get(path.name, set())


def test_the_pure_core_is_all_there() -> None:
    assert all(p.is_file() for p in PURE), [str(p) for p in PURE if not p.is_file()]
    names = {p.name for p in PURE}
    assert {
        "rtp.py",
        "h264.py",
        "h265.py",
        "depacketizer.py",
        "timeline.py",
        "segmenter.py",
        "retention_plan.py",
    } <= names
