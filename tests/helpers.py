"""Helpers shared by the tests and the scripts: one definition each.

Scripts import this module by path (``scripts/`` puts the repository root on ``sys.path``),
so it imports nothing beyond the standard library at module level (:func:`write_config` imports
``csud.store.identity`` only when asked to create the store).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

NS_PER_SECOND = 1_000_000_000

Value = str | int | float | bool
Table = Mapping[str, Value]

METZ: Table = {"id": "metz", "name": "Metz", "service": "live", "retention_days": 15}
WOIPPY: Table = {"id": "woippy", "name": "Woippy", "service": "storage", "retention_days": 30}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 90.0) -> None:
    """Return once something accepts connections on 127.0.0.1:``port``; TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


@dataclass(frozen=True)
class Site:
    """What a config describes besides its options: the ``[[communes]]`` and ``[[cameras]]``, and
    the site's own defaults for other tables (``{"storage": {"min_free_percent": 0}}``)."""

    communes: Sequence[Table]
    cameras: Sequence[Table]
    tables: Mapping[str, Table] = field(default_factory=dict)


def sim_site(
    port: int,
    cameras: int,
    *,
    auth: str = "",
    camera_options: Sequence[Mapping[str, Value]] = (),
    stall_seconds: int = 5,
) -> Site:
    """``cameras`` cameras ``cam1``.. of commune ``metz`` at ``rtsp://{auth}127.0.0.1:port/camN``
    (the simulator's paths), RTP over UDP bound to loopback, no metrics endpoint.
    ``camera_options[i]`` overrides camera ``i + 1``: ``path`` (URL path, default ``/camN``) and
    any camera key (``username``, ``password``, ``transport``...)."""
    out = []
    for i in range(1, cameras + 1):
        options = dict(camera_options[i - 1]) if i <= len(camera_options) else {}
        url_path = options.pop("path", f"/cam{i}")
        options.setdefault("stall_seconds", stall_seconds)
        out.append(
            {"id": f"cam{i}", "commune": "metz", "url": f"rtsp://{auth}127.0.0.1:{port}{url_path}", **options}
        )
    tables = {"network": {"udp_bind": "127.0.0.1"}, "metrics": {"listen": ""}}
    return Site(communes=[METZ], cameras=out, tables=tables)


def write_config(
    tmp: Path,
    site: Site,
    *,
    root: Path | None = None,
    name: str = "csud.toml",
    segment_seconds: int | None = None,
    min_free_percent: float | None = None,
    metrics_listen: str | None = None,
    signing_key: Path | None = None,
    init: bool = True,
) -> Path:
    """Write the config ``tmp/name`` for ``site`` with its store at ``root`` (default
    ``tmp/store``), and (``init``) create that store as ``csud init`` does (``csud run`` never
    creates one). Returns the config's path.

    Besides ``storage.root``, only the site's ``tables`` and the options given are written (an
    option overrides the site): ``metrics_listen`` is ``metrics.listen`` (``""``: no endpoint)."""
    root = tmp / "store" if root is None else root
    tables: dict[str, dict[str, Value]] = {"storage": {"root": str(root)}}
    for table, values in site.tables.items():
        tables.setdefault(table, {}).update(values)
    if segment_seconds is not None:
        tables["storage"]["segment_seconds"] = segment_seconds
    if min_free_percent is not None:
        tables["storage"]["min_free_percent"] = min_free_percent
    if metrics_listen is not None:
        tables.setdefault("metrics", {})["listen"] = metrics_listen
    if signing_key is not None:
        tables.setdefault("evidence", {})["signing_key"] = str(signing_key)
    lines: list[str] = []
    for table, values in tables.items():
        lines += [f"[{table}]", *_pairs(values)]
    for commune in site.communes:
        lines += ["[[communes]]", *_pairs(commune)]
    for camera in site.cameras:
        lines += ["[[cameras]]", *_pairs(camera)]
    path = tmp / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    if init:
        from csud.store.identity import create_store

        create_store(root)
    return path


def _pairs(table: Table) -> list[str]:
    # A JSON string, number or boolean is a valid TOML value (strings: JSON escapes are TOML's).
    return [f"{key} = {json.dumps(value, ensure_ascii=False)}" for key, value in table.items()]
