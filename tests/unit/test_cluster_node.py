"""csud.cluster.node against an in-memory etcd and a fake clock: the ownership protocol step by
step (the real-etcd, real-process version is tests/cluster/test_cluster.py)."""

from __future__ import annotations

from typing import Any

from csud.cluster.etcd import EtcdUnavailable, KeyValue
from csud.cluster.node import OWNERS, ClusterNode
from csud.cluster.placement import place
from csud.config import ClusterConfig

CAMERAS = [f"cam{i}" for i in range(1, 9)]


class FakeEtcd:
    """Keys, revisions and leases as etcd keeps them; ``expire`` plays the lease TTL running out."""

    def __init__(self) -> None:
        self.revision = 0
        self.keys: dict[str, KeyValue] = {}
        self.leases: set[int] = set()
        self.next_lease = 100
        self.down = False
        self.endpoint = "fake"

    def _check(self) -> None:
        if self.down:
            raise EtcdUnavailable("etcd down")

    async def grant(self, ttl: int) -> int:
        self._check()
        self.next_lease += 1
        self.leases.add(self.next_lease)
        return self.next_lease

    async def keepalive(self, lease: int) -> int:
        self._check()
        return 4 if lease in self.leases else 0

    async def revoke(self, lease: int) -> None:
        self._check()
        self.expire(lease)

    def expire(self, lease: int) -> None:
        self.leases.discard(lease)
        self.keys = {k: v for k, v in self.keys.items() if v.lease != lease}

    async def put(self, key: str, value: str, lease: int = 0) -> int:
        self._check()
        self.revision += 1
        self.keys[key] = KeyValue(key, value, self.revision, lease)
        return self.revision

    async def create(self, key: str, value: str, lease: int) -> tuple[bool, KeyValue | None]:
        self._check()
        if key in self.keys:
            return False, self.keys[key]
        await self.put(key, value, lease)
        return True, self.keys[key]

    async def delete_if(self, key: str, mod_revision: int) -> bool:
        self._check()
        if key in self.keys and self.keys[key].mod_revision == mod_revision:
            del self.keys[key]
            return True
        return False

    async def delete(self, key: str) -> None:
        self._check()
        self.keys.pop(key, None)

    async def get_prefix(self, prefix: str) -> list[KeyValue]:
        self._check()
        return [v for k, v in sorted(self.keys.items()) if k.startswith(prefix)]

    async def close(self) -> None:
        pass


class FakeRecorders:
    def __init__(self) -> None:
        self.on: set[str] = set()
        self.frames: set[str] = set()
        self.log: list[tuple[str, str]] = []

    def start(self, camera: str) -> None:
        self.on.add(camera)
        self.log.append(("start", camera))

    async def stop(self, cameras: list[str]) -> None:
        for camera in cameras:
            self.on.discard(camera)
            self.frames.discard(camera)
            self.log.append(("stop", camera))

    def has_frames(self, camera: str) -> bool:
        return camera in self.frames

    def running(self) -> set[str]:
        return set(self.on)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(name: str, etcd: FakeEtcd, clock: Clock, capacity: int = 100) -> tuple[ClusterNode, FakeRecorders]:
    config = ClusterConfig(
        etcd=["http://x"], node=name, advertise=f"http://{name}", lease_seconds=4, capacity=capacity
    )
    recorders = FakeRecorders()
    etcd_any: Any = etcd
    return ClusterNode(config, lambda: CAMERAS, recorders, etcd=etcd_any, clock=clock), recorders


def owners(etcd: FakeEtcd) -> dict[str, str]:
    return {k[len(OWNERS) :]: v.value for k, v in etcd.keys.items() if k.startswith(OWNERS)}


async def test_one_node_takes_everything_then_hands_over_make_before_break() -> None:
    etcd, clock = FakeEtcd(), Clock()
    a, rec_a = make("rec-a", etcd, clock)
    await a.step()
    assert owners(etcd) == dict.fromkeys(CAMERAS, "rec-a") and rec_a.on == set(CAMERAS)
    fences = dict(a.fences)
    assert all(f > 0 for f in fences.values())

    b, rec_b = make("rec-b", etcd, clock)
    await b.step()  # joins: member key; placement now splits; b must not own yet
    await a.step()
    await b.step()  # b starts its share alongside a (claim "starting")
    moving = {c for c, n in place(CAMERAS, {"rec-a": 100, "rec-b": 100}).items() if n == "rec-b"}
    assert moving and rec_b.on == moving and rec_a.on == set(CAMERAS)  # both record: no gap
    assert all(b.fence(c) > fences[c] for c in moving)  # the claim's revision fences b's rows
    await a.step()
    assert rec_a.on == set(CAMERAS)  # not ready yet: a keeps them

    rec_b.frames |= moving  # frames flowed on b
    await b.step()  # claim -> "ready"
    await a.step()  # a lets go: stops, deletes its owner keys
    assert rec_a.on == set(CAMERAS) - moving
    assert ("stop", sorted(moving)[0]) in rec_a.log
    await b.step()  # b creates the owner keys
    assert owners(etcd) == place(CAMERAS, {"rec-a": 100, "rec-b": 100})
    assert all(b.fence(c) > fences[c] for c in moving)
    assert not [k for k in etcd.keys if k.startswith("/csud/ready/")]  # claims cleaned up


async def test_lost_lease_stops_every_recorder_before_etcd_expires_it() -> None:
    etcd, clock = FakeEtcd(), Clock()
    a, rec_a = make("rec-a", etcd, clock)
    await a.step()
    assert rec_a.on == set(CAMERAS)
    etcd.down = True
    clock.now += 2.9  # under lease - margin (4 - 1 = 3 s)
    assert await a.check_lease() and rec_a.on == set(CAMERAS)
    clock.now += 0.2
    assert not await a.check_lease()
    assert rec_a.on == set() and a.lease_id is None  # 3.1 s < the 4-s lease: stopped first


async def test_dead_node_cameras_taken_after_expiry_and_stale_keys_replaced() -> None:
    etcd, clock = FakeEtcd(), Clock()
    a, rec_a = make("rec-a", etcd, clock)
    b, rec_b = make("rec-b", etcd, clock)
    for _ in range(3):
        await a.step()
        await b.step()
        rec_a.frames |= rec_a.on
        rec_b.frames |= rec_b.on
    for _ in range(3):
        await a.step()
        await b.step()
    assert owners(etcd) == place(CAMERAS, {"rec-a": 100, "rec-b": 100})
    assert rec_a.on | rec_b.on == set(CAMERAS) and not rec_a.on & rec_b.on
    assert b.lease_id is not None
    etcd.expire(b.lease_id)  # rec-b died: its lease ran out, its keys went with it
    await a.step()
    assert rec_a.on == set(CAMERAS) and owners(etcd) == dict.fromkeys(CAMERAS, "rec-a")

    # rec-a restarts with a new lease while its old keys are still there: they are replaced.
    a2, rec_a2 = make("rec-a", etcd, clock)
    await a2.step()
    assert rec_a2.on == set(CAMERAS)
    assert all(v.lease == a2.lease_id for k, v in etcd.keys.items() if k.startswith(OWNERS))


async def test_capacity_leaves_cameras_unassigned_and_the_owner_keeps_them() -> None:
    etcd, clock = FakeEtcd(), Clock()
    a, rec_a = make("rec-a", etcd, clock, capacity=3)
    await a.step()
    assert len(rec_a.on) == 3 and len(owners(etcd)) == 3
