"""Which node records which camera: rendezvous (highest-random-weight) hashing under capacity.

Pure and deterministic: every node computes the same answer from the same members and cameras,
with no coordination beyond reading them from etcd. For camera ``c`` each node ``n`` gets the
score ``sha256(c NUL n)``; the camera goes to its best-scoring node that still has room.

Why this rule: when a node joins, the only cameras that move are those whose new best node is the
newcomer (about ``1/N`` of them); when a node leaves, only its own cameras move, each to its
next-best node, spread evenly. With room everywhere the answer does not depend on the order of
cameras. When capacity binds, cameras are placed in a fixed order (by id), so the answer is
still the same on every node; a camera that fits nowhere is unassigned (``None``), which the
``csud_cluster_unassigned_cameras`` metric and its alert report.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

SCORE_BYTES = 8


def score(camera: str, node: str) -> int:
    digest = hashlib.sha256(camera.encode() + b"\x00" + node.encode()).digest()
    return int.from_bytes(digest[:SCORE_BYTES], "big")


def ranking(camera: str, nodes: Iterable[str]) -> list[str]:
    """Nodes in ``camera``'s order of preference (ties, vanishingly rare, broken by name)."""
    return sorted(nodes, key=lambda node: (-score(camera, node), node))


def place(cameras: Iterable[str], capacity: Mapping[str, int]) -> dict[str, str | None]:
    """``camera -> node`` (or ``None`` when every node is full); ``capacity``: node -> most cameras."""
    room = {node: max(0, cap) for node, cap in capacity.items()}
    placement: dict[str, str | None] = {}
    for camera in sorted(set(cameras)):
        chosen = None
        for node in ranking(camera, room):
            if room[node] > 0:
                room[node] -= 1
                chosen = node
                break
        placement[camera] = chosen
    return placement


def moved(before: Mapping[str, str | None], after: Mapping[str, str | None]) -> set[str]:
    """Cameras whose node differs between two placements."""
    return {camera for camera in set(before) | set(after) if before.get(camera) != after.get(camera)}
