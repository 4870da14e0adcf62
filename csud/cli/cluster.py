"""``csud cluster status [--json]``: members and camera owners, read from etcd (DESIGN.md,
"Cluster"). Works from any node, whether or not its daemon runs; exit 2 without ``[cluster]``,
exit 1 when no etcd endpoint answers."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable
from typing import Any

from csud.errors import ConfigError

WithConfig = Callable[[argparse.ArgumentParser], argparse.ArgumentParser]


def register(subparsers: Any, with_config: WithConfig) -> None:
    cluster = subparsers.add_parser("cluster", help="the cluster of recorder nodes (etcd)")
    sub = cluster.add_subparsers(dest="cluster_command", required=True)
    st = with_config(sub.add_parser("status", help="members and which node records each camera"))
    st.add_argument("--json", action="store_true", help="members and owners as JSON (DESIGN.md, Cluster)")
    st.set_defaults(handler=cmd_cluster_status)


async def _status(endpoints: list[str], cameras: list[str]) -> dict[str, Any]:
    from csud.cluster.etcd import Etcd
    from csud.cluster.node import read_view, status_document

    etcd = Etcd(endpoints)
    try:
        return status_document(await read_view(etcd), cameras)
    finally:
        await etcd.close()


def cmd_cluster_status(args: argparse.Namespace) -> int:
    from csud.config import load_config

    settings = load_config(args.config).settings
    if settings.cluster is None:
        raise ConfigError("no [cluster] section: this node is not in a cluster")
    cameras = [c.id for c in settings.cameras if c.enabled]
    doc = asyncio.run(_status(settings.cluster.etcd, cameras))
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    for m in doc["members"]:
        print(f"{m['node']:<16} {m['advertise']:<32} {m['cameras']:>5}/{m['capacity']} cameras")
    unassigned = [c for c, n in doc["cameras"].items() if n is None]
    print(f"{len(doc['members'])} member(s); {len(unassigned)} camera(s) unassigned")
    for camera in unassigned:
        print(f"  unassigned: {camera}")
    return 0


def cmd_segments_cluster(
    args: argparse.Namespace, settings: Any, from_ns: int | None, to_ns: int | None
) -> int:
    """``csud segments`` in a cluster: every node's rows, each with its ``node``. A node that
    does not answer is named on stderr ("node rec-2 unreachable") and the exit code is 1: the
    list is incomplete, never "not recorded"."""
    import sys

    from csud.cli.common import format_time, site_zone
    from csud.cluster.queries import cluster_rows

    tz = site_zone(settings)
    result = asyncio.run(cluster_rows(settings, args.camera, from_ns, to_ns))
    if args.json:
        out = [
            {
                "camera": r["camera"],
                "commune": r["commune"],
                "start": format_time(r["start_ns"], tz),
                "end": format_time(r["end_ns"], tz),
                "start_ns": r["start_ns"],
                "end_ns": r["end_ns"],
                "path": r["path"],
                "bytes": r["bytes"],
                "frames": r["frames"],
                "sha256": r["sha256"],
                "node": r["node"],
                "fence": r["fence"],
            }
            for r in result.rows
        ]
        print(json.dumps(out, indent=2))
    elif not result.rows:
        print(f"no segments for camera {args.camera} on the reachable nodes")
    else:
        for r in result.rows:
            print(
                f"{format_time(r['start_ns'], tz)}  {format_time(r['end_ns'], tz)}  {r['frames']:6d} frames  "
                f"{r['bytes']:>11d} B  {r['node']}:{r['path']}"
            )
    for exc in result.unreachable:
        print(f"csud segments: {exc}: its footage is not listed", file=sys.stderr)
    return 1 if result.unreachable else 0


def hold_everywhere(settings: Any, hold: Any) -> int:
    """After ``csud hold add`` placed ``hold`` here: the same hold on every other node. A node
    that does not answer is named on stderr and the exit code is 1 (run the command again when
    it is back: each node journals the holds it receives)."""
    import sys

    from csud.cluster.queries import place_hold_everywhere

    doc = {
        "cameras": list(hold.cameras),
        "from_ns": hold.from_ns,
        "to_ns": hold.to_ns,
        "requisition": hold.requisition,
        "officer": hold.officer,
        "reason": hold.reason,
        "until_ns": hold.until_ns,
        "actor": hold.created_by,
        "created_ns": hold.created_ns,  # with the other fields, identifies the hold on every node
    }
    result = asyncio.run(place_hold_everywhere(settings, doc))
    for node, hold_id in sorted(result.placed.items()):
        print(f"  also on node {node} (hold {hold_id} there)")
    for exc in result.unreachable:
        print(f"csud hold add: {exc}: the hold is NOT placed there yet", file=sys.stderr)
    return 1 if result.unreachable else 0


def verify_archive_elsewhere(settings: Any, camera: str | None) -> bool:
    """``verify --archive`` on every other node (each reads its own bytes): their lines, node by
    node; False if any failed or did not answer."""
    from csud.cluster.queries import verify_everywhere

    reports, unreachable = asyncio.run(verify_everywhere(settings, camera))
    ok = not unreachable
    for node, rep in sorted(reports.items()):
        for bad in rep["mismatched"]:
            print(f"MISMATCH  {node}:{bad['path']}: {bad['why']}")
        for path in rep["missing"]:
            print(f"MISSING   {node}:{path}")
        for path in rep["unindexed"]:
            print(f"UNINDEXED {node}:{path}")
        print(
            f"node {node}: checked {rep['checked']} segment(s), {rep['bytes']} B: {len(rep['mismatched'])} "
            f"mismatched, {len(rep['missing'])} missing, {len(rep['unindexed'])} unindexed"
        )
        ok = ok and not (rep["mismatched"] or rep["missing"] or rep["unindexed"])
    for exc in unreachable:
        print(f"{exc}: its archive is NOT checked")
    return ok


def registre_everywhere(
    settings: Any, commune: str, month: str, rows: list[dict[str, Any]], views: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[Any]]:
    """This node's registre rows merged with every other node's, each tagged with its node."""
    from csud.cluster.registre import merge, others_registre

    parts, unreachable = asyncio.run(others_registre(settings, commune, month))
    merged = merge(settings.cluster.node, {"recordings": rows, "live_views": views}, parts)
    return merged["recordings"], merged["live_views"], unreachable


def release_everywhere(settings: Any, hold: Any) -> int:
    """After ``csud hold release`` here: release the same hold on every other node (identified
    by requisition, interval, cameras and creation time). An unreachable node is named, exit 1:
    its copy still protects the footage there until released."""
    import sys

    from csud.cluster.queries import place_hold_everywhere

    doc = {
        "requisition": hold.requisition,
        "from_ns": hold.from_ns,
        "to_ns": hold.to_ns,
        "cameras": list(hold.cameras),
        "created_ns": hold.created_ns,
        "reason": hold.release_reason,
        "actor": hold.released_by,
    }
    result = asyncio.run(place_hold_everywhere(settings, doc, release=True))
    for node, ids in sorted(result.placed.items()):
        print(f"  released on node {node} too (hold {', '.join(map(str, ids)) or 'none found'} there)")
    for exc in result.unreachable:
        print(f"csud hold release: {exc}: the hold still protects the footage there", file=sys.stderr)
    return 1 if result.unreachable else 0
