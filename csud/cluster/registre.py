"""The registre of a commune over the whole cluster: each node's own rows (its recordings,
destructions, holds and live views), fetched through the node API and tagged with the node.

Each node computes its part with the same code as ``csud registre`` on one node
(:func:`csud.cluster.runtime.node_registre`, served by the node API); a camera-day
recorded by two nodes (a failover that day) is two rows, one per node, each with its hours.
"""

from __future__ import annotations

from typing import Any

from csud.cluster.client import NodeUnreachable
from csud.cluster.queries import ask_others
from csud.config import Settings


async def others_registre(
    settings: Settings, commune: str, month: str
) -> tuple[dict[str, dict[str, Any]], list[NodeUnreachable]]:
    """Every other node's part (node -> document), and the nodes that did not answer."""
    return await ask_others(settings, lambda c: c.registre(commune, month))


def merge(local_node: str, local: dict[str, Any], parts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One document, every row tagged with its ``node``, recordings by camera, day, node."""
    recordings = [{**r, "node": local_node} for r in local["recordings"]]
    views = [{**v, "node": local_node} for v in local["live_views"]]
    for node, doc in parts.items():
        recordings += [{**r, "node": node} for r in doc["recordings"]]
        views += [{**v, "node": node} for v in doc["live_views"]]
    recordings.sort(key=lambda r: (str(r["camera"]), str(r["day"]), str(r["node"])))
    return {"recordings": recordings, "live_views": views}
