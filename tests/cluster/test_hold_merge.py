"""``csud hold list`` in a cluster: holds merged across nodes by what identifies them everywhere."""

from __future__ import annotations

from typing import Any

from csud.cluster.queries import merge_holds


def hold(hold_id: int, created_ns: int, requisition: str = "PV-1", released: bool = False) -> dict[str, Any]:
    return {
        "id": hold_id, "cameras": ["cam2", "cam1"], "from_ns": 10, "to_ns": 20, "requisition": requisition,
        "officer": "OPJ", "reason": "r", "until_ns": None, "created_ns": created_ns, "created_by": "x",
        "released_ns": 30 if released else None, "released_by": None, "release_reason": None,
    }  # fmt: skip


def test_same_hold_on_two_nodes_is_one_entry_with_both_copies_and_local_first() -> None:
    by_node = {
        "rec-2": [hold(7, 100), hold(8, 200, "PV-2")],
        "rec-1": [{**hold(3, 100, released=True), "cameras": ["cam1", "cam2"]}],  # order of cameras
    }
    merged = merge_holds(by_node, local="rec-1")
    assert [e["hold"]["requisition"] for e in merged] == ["PV-1", "PV-2"]  # by creation time
    first, second = merged
    assert first["hold"]["id"] == 3 and set(first["copies"]) == {"rec-1", "rec-2"}
    assert first["copies"]["rec-2"]["id"] == 7
    assert set(second["copies"]) == {"rec-2"}  # missing on rec-1


def test_a_different_creation_time_is_a_different_hold() -> None:
    merged = merge_holds({"rec-1": [hold(1, 100)], "rec-2": [hold(1, 101)]}, local="rec-1")
    assert len(merged) == 2
