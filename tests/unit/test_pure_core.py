"""The pure core (csud/proto, csud/store) does no I/O and reads no clock: time is passed in."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "csud"
PURE = sorted(p for d in ("proto", "store") for p in (PACKAGE / d).glob("*.py") if p.name != "__init__.py")
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
ALLOWED = {"layout.py": {"datetime"}}


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
    names = {p.name for p in PURE}
    assert {
        "rtp.py",
        "h264.py",
        "h265.py",
        "depacketizer.py",
        "timeline.py",
        "segmenter.py",
        "retention.py",
    } <= names
