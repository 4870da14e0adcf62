"""A reload that changes ``[web]`` is refused as a whole (docs/live.md, "Misbehaving clients"):
the rights it would also change are not applied until the reload is redone without that change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from csud.config import LoadedConfig, parse_settings
from csud.errors import ConfigError
from csud.service.daemon import Daemon


def _loaded(tmp: Path, service: str = "live", session_minutes: int = 480) -> LoadedConfig:
    raw: dict[str, Any] = {
        "storage": {"root": str(tmp / "store")},
        "web": {"listen": "127.0.0.1:8080", "session_minutes": session_minutes},
        "communes": [{"id": "metz", "name": "Metz", "service": service, "retention_days": 15}],
    }
    return LoadedConfig(parse_settings(raw), tmp / "csud.toml", "0" * 64)


def test_reload_changing_web_is_refused_whole_and_rights_alone_are_applied(tmp_path: Path) -> None:
    daemon = Daemon(_loaded(tmp_path))
    with pytest.raises(ConfigError, match=r"\[web\] changed.*reload refused"):
        daemon._plan_reload(_loaded(tmp_path, service="storage", session_minutes=60))
    daemon._plan_reload(_loaded(tmp_path, service="storage"))  # the right alone: accepted
