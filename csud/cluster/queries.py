"""Cluster-wide queries: the archive of every node, seen from any node (DESIGN.md, "Cluster").

Footage stays on the node that recorded it. A query asks every node that ever joined (the
``/csud/nodes/`` registry in etcd, which outlives the nodes' leases) through the node API, reads
this node's own index directly, and merges. A node that does not answer is reported by name
("node rec-2 unreachable"), never taken for "not recorded".

Extraction across nodes (:func:`archive`): the other nodes' segment files in the interval are
fetched into a work directory, next to a link to this node's store, under ``nodes/<node>/``;
an index view merges every node's rows (paths ``nodes/<node>/<path>``) and hands everything
else (the journal) to this node's index. The extractor then runs unchanged: it checks every
segment's bytes against the hash its own node recorded, and the manifest's source paths name
the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import aiohttp

from csud.cluster.api import INDEX_FILENAME, segment_rows
from csud.cluster.client import NodeClient, NodeUnreachable
from csud.cluster.etcd import Etcd
from csud.cluster.node import read_view
from csud.config import ClusterConfig, Settings
from csud.errors import CsudError
from csud.recording.writer import FragmentInfo
from csud.store.index import Index, SegmentRow

NODES_DIR = "nodes"


@dataclass
class ClusterRows:
    rows: list[dict[str, Any]] = field(default_factory=list)
    unreachable: list[NodeUnreachable] = field(default_factory=list)


T = TypeVar("T")


async def known_nodes(config: ClusterConfig) -> dict[str, str]:
    """node -> advertise, for every node that ever joined (live members' current address wins)."""
    etcd = Etcd(config.etcd)
    try:
        view = await read_view(etcd)
    finally:
        await etcd.close()
    nodes = dict(view.known)
    nodes.update({m.node: m.advertise for m in view.members.values()})
    nodes.setdefault(config.node, config.advertise)
    return nodes


async def ask_others(
    settings: Settings, call: Callable[[NodeClient], Awaitable[T]]
) -> tuple[dict[str, T], list[NodeUnreachable]]:
    """``call`` on every other node that ever joined, concurrently: node -> answer, and the nodes
    that did not answer (any failure is reported as that node being unreachable, never as data)."""
    config = settings.cluster
    assert config is not None
    secret = config.read_secret()
    nodes = await known_nodes(config)
    found: dict[str, T] = {}
    unreachable: list[NodeUnreachable] = []
    async with aiohttp.ClientSession() as session:
        others = [NodeClient(n, a, secret, session) for n, a in sorted(nodes.items()) if n != config.node]
        answers = await asyncio.gather(*(call(c) for c in others), return_exceptions=True)
    for client, answer in zip(others, answers, strict=True):
        if isinstance(answer, BaseException):
            unreachable.append(
                answer if isinstance(answer, NodeUnreachable) else NodeUnreachable(client.node, str(answer))
            )
        else:
            found[client.node] = answer
    return found, unreachable


def local_rows(
    root: Path, camera: str, from_ns: int | None, to_ns: int | None, node: str
) -> list[dict[str, Any]]:
    path = root / INDEX_FILENAME
    if not path.exists():
        return []
    index = Index.open(path, readonly=True)
    try:
        rows = segment_rows(index, camera, from_ns, to_ns)
    finally:
        index.close()
    for row in rows:
        row["node"] = row["node"] or node
    return rows


async def cluster_rows(
    settings: Settings, camera: str, from_ns: int | None, to_ns: int | None
) -> ClusterRows:
    config = settings.cluster
    assert config is not None
    out = ClusterRows(rows=local_rows(settings.storage.root, camera, from_ns, to_ns, config.node))
    found, out.unreachable = await ask_others(settings, lambda c: c.segments(camera, from_ns, to_ns))
    for rows in found.values():
        out.rows.extend(rows)
    out.rows.sort(key=lambda r: (r["start_ns"], str(r["node"])))
    return out


class MergedIndex:
    """An :class:`Index` whose ``segments`` and ``fragments`` cover every node; anything else
    (journal, holds) is this node's index."""

    def __init__(self, local: Index) -> None:
        self._local = local
        self._rows: dict[str, list[SegmentRow]] = {}
        self._fragments: dict[int, list[FragmentInfo]] = {}
        self.nodes_of: dict[int, str] = {}

    def add(self, node: str, row: dict[str, Any], fragments: list[FragmentInfo]) -> None:
        synthetic = len(self.nodes_of) + 1
        seg = SegmentRow(
            id=synthetic,
            camera=row["camera"],
            commune=row["commune"],
            start_ns=row["start_ns"],
            end_ns=row["end_ns"],
            path=f"{NODES_DIR}/{node}/{row['path']}",
            bytes=row["bytes"],
            frames=row["frames"],
            sha256=row["sha256"],
            created_ns=0,
        )
        self._rows.setdefault(seg.camera, []).append(seg)
        self._fragments[synthetic] = fragments
        self.nodes_of[synthetic] = node

    def segments(self, camera: str, from_ns: int | None = None, to_ns: int | None = None) -> list[SegmentRow]:
        rows = [
            r
            for r in self._rows.get(camera, [])
            if (to_ns is None or r.start_ns < to_ns) and (from_ns is None or r.end_ns > from_ns)
        ]
        return sorted(rows, key=lambda r: (r.start_ns, r.id))

    def fragments(self, segment_id: int) -> list[FragmentInfo]:
        return self._fragments[segment_id]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._local, name)


async def _gather_archive(
    settings: Settings, local: Index, cameras: list[str], from_ns: int, to_ns: int, work: Path
) -> MergedIndex:
    config = settings.cluster
    assert config is not None
    secret = config.read_secret()
    nodes = await known_nodes(config)
    merged = MergedIndex(local)
    (work / NODES_DIR).mkdir(parents=True, exist_ok=True)
    (work / NODES_DIR / config.node).symlink_to(settings.storage.root.absolute(), target_is_directory=True)
    unreachable: list[NodeUnreachable] = []
    async with aiohttp.ClientSession() as session:
        clients = {n: NodeClient(n, a, secret, session) for n, a in nodes.items() if n != config.node}
        for camera in cameras:
            for own in local.segments(camera, from_ns, to_ns):
                merged.add(config.node, _row_dict(own), local.fragments(own.id))
            for node, client in sorted(clients.items()):
                try:
                    for row in await client.segments(camera, from_ns, to_ns):
                        frags = [FragmentInfo(**f) for f in await client.fragments(row["id"])]
                        await client.download(row["id"], work / NODES_DIR / node / row["path"])
                        merged.add(node, row, frags)
                except NodeUnreachable as exc:
                    unreachable.append(exc)
    if unreachable:
        names = ", ".join(sorted({u.node for u in unreachable}))
        raise CsudError(f"node {names} unreachable: its footage cannot be extracted now (not 'not recorded')")
    return merged


def _row_dict(row: SegmentRow) -> dict[str, Any]:
    return {
        "camera": row.camera,
        "commune": row.commune,
        "start_ns": row.start_ns,
        "end_ns": row.end_ns,
        "path": row.path,
        "bytes": row.bytes,
        "frames": row.frames,
        "sha256": row.sha256,
    }


@contextlib.contextmanager
def archive(
    settings: Settings, local: Index, cameras: list[str], from_ns: int, to_ns: int
) -> Iterator[tuple[Path, Index]]:
    """``(root, index)`` covering every node's footage of ``cameras`` in ``[from_ns, to_ns)``."""
    with tempfile.TemporaryDirectory(prefix="csud-cluster-extract-") as tmp:
        work = Path(tmp)
        merged = asyncio.run(_gather_archive(settings, local, cameras, from_ns, to_ns, work))
        yield work, cast(Index, merged)  # duck-typed: segments and fragments merged, the rest local


async def place_hold_everywhere(
    settings: Settings, hold: dict[str, Any], release: bool = False
) -> ClusterHolds:
    """The same hold on every other node that ever joined (this node's is placed by the caller);
    ``release``: release it there instead."""
    placed, unreachable = await ask_others(
        settings, lambda c: c.release_hold(hold) if release else c.add_hold(hold)
    )
    out = ClusterHolds(placed=placed, unreachable=unreachable)
    return out


@dataclass
class ClusterHolds:
    placed: dict[str, Any] = field(default_factory=dict)  # node -> hold id there (ids released)
    unreachable: list[NodeUnreachable] = field(default_factory=list)


async def verify_everywhere(
    settings: Settings, camera: str | None
) -> tuple[dict[str, Any], list[NodeUnreachable]]:
    """``verify --archive`` on every other node: node -> report, and the nodes that did not answer."""
    return await ask_others(settings, lambda c: c.verify_archive(camera))


async def holds_everywhere(
    settings: Settings,
) -> tuple[dict[str, list[dict[str, Any]]], list[NodeUnreachable]]:
    """Every other node's holds (node API ``GET /v1/holds``): node -> rows, and who did not answer."""
    return await ask_others(settings, lambda c: c.holds())


def hold_key(hold: dict[str, Any]) -> tuple[str, int, int, tuple[str, ...], int]:
    """What identifies one hold on every node (ids differ): the same fields ``hold release`` uses."""
    return (
        str(hold["requisition"]),
        int(hold["from_ns"]),
        int(hold["to_ns"]),
        tuple(sorted(hold["cameras"])),
        int(hold["created_ns"]),
    )


def merge_holds(by_node: dict[str, list[dict[str, Any]]], local: str) -> list[dict[str, Any]]:
    """One entry per hold: its fields (this node's copy if it has one), and ``copies``: node ->
    that node's copy (each with its own ``id`` and release fields). Ordered by creation time."""
    merged: dict[tuple[str, int, int, tuple[str, ...], int], dict[str, Any]] = {}
    for node in sorted(by_node, key=lambda n: (n != local, n)):  # this node's copy first
        for hold in by_node[node]:
            entry = merged.setdefault(hold_key(hold), {"hold": hold, "copies": {}})
            entry["copies"][node] = hold
    return sorted(merged.values(), key=lambda e: (e["hold"]["created_ns"], e["hold"]["requisition"]))
