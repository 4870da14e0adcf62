"""One csud node in a cluster: its lease, its member key, the cameras it owns (etcd keys).

Keys (all bound to the node's lease, so they vanish when it dies):

- ``/csud/members/<node>``: ``{"advertise", "capacity"}``: the node is alive.
- ``/csud/owners/<camera>``: ``"<node>"``, created only if absent (a transaction on
  ``create_revision == 0``). Its mod revision is the *fencing token* stamped on every segment
  row the owner writes (``segments.fence``).
- ``/csud/ready/<camera>/<node>``: the camera's designated new owner has received frames
  (make-before-break: the old owner releases only then).

Every ``tick`` the node refreshes its lease when due, reads ``/csud/`` once, places every camera
with :func:`csud.cluster.placement.place` and converges: create the owner keys it should hold and
start their recorders; start a camera it should take from a live owner and announce ``ready``
once it has frames; release (stop, delete its key) a camera whose new owner is ready.

Losing the lease: a separate guard task stops every recorder once ``lease_seconds - margin``
have passed since the last keep-alive etcd acknowledged (counted from when the request was
*sent*, so never later than etcd's own expiry). The lease then expires in etcd and another node
takes the cameras: a camera is never recorded by two nodes because of a lost node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from csud.cluster.etcd import Etcd, EtcdUnavailable, KeyValue
from csud.cluster.placement import place
from csud.config import ClusterConfig
from csud.log import get_logger
from csud.service import metrics

PREFIX = "/csud/"
MEMBERS = PREFIX + "members/"
OWNERS = PREFIX + "owners/"
READY = PREFIX + "ready/"
NODES = PREFIX + "nodes/"  # every node that ever joined (no lease): whose archive to ask
CLAIM_STARTING = "starting"  # a new owner's claim while its recorder starts
CLAIM_READY = "ready"  # ... once frames flow: the old owner may let go


class Recorders(Protocol):
    """What the node needs from the daemon: start and stop a camera's recorder, and whether it
    has received frames yet (the recorder internals are not the cluster's business)."""

    def start(self, camera: str) -> None: ...

    async def stop(self, cameras: list[str]) -> None: ...

    def has_frames(self, camera: str) -> bool: ...

    def running(self) -> set[str]: ...


@dataclass(frozen=True, slots=True)
class Member:
    node: str
    advertise: str
    capacity: int


@dataclass
class View:
    """One read of ``/csud/``."""

    members: dict[str, Member] = field(default_factory=dict)
    owners: dict[str, KeyValue] = field(default_factory=dict)
    ready: dict[str, set[str]] = field(default_factory=dict)  # camera -> nodes with frames
    ready_now: dict[str, set[str]] = field(default_factory=dict)  # node -> cameras it says ready
    known: dict[str, str] = field(default_factory=dict)  # node -> advertise, alive or not


def parse_view(kvs: list[KeyValue]) -> View:
    view = View()
    for kv in kvs:
        if kv.key.startswith(MEMBERS):
            node = kv.key[len(MEMBERS) :]
            try:
                data = json.loads(kv.value)
                view.members[node] = Member(node, str(data["advertise"]), int(data["capacity"]))
            except (ValueError, KeyError, TypeError):
                continue  # a foreign or damaged key is not a member
        elif kv.key.startswith(NODES):
            view.known[kv.key[len(NODES) :]] = kv.value
        elif kv.key.startswith(OWNERS):
            view.owners[kv.key[len(OWNERS) :]] = kv
        elif kv.key.startswith(READY):
            camera, _, node = kv.key[len(READY) :].rpartition("/")
            if kv.value == CLAIM_READY:
                view.ready.setdefault(camera, set()).add(node)
                view.ready_now.setdefault(node, set()).add(camera)
    return view


async def read_view(etcd: Etcd) -> View:
    return parse_view(await etcd.get_prefix(PREFIX))


class ClusterNode:
    def __init__(
        self,
        config: ClusterConfig,
        cameras: Callable[[], list[str]],
        recorders: Recorders,
        etcd: Etcd | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.node = config.node
        self.cameras = cameras
        self.recorders = recorders
        self.lease_seconds = config.lease_seconds
        # etcd calls fail within a third of the lease: a dead member costs one timeout, not the lease.
        self.etcd = etcd or Etcd(config.etcd, timeout_seconds=min(2.0, config.lease_seconds / 3))
        self.clock = clock
        self.tick_seconds = min(0.5, config.lease_seconds / 8)
        self.keepalive_seconds = config.lease_seconds / 4
        self.safe_seconds = config.lease_seconds - max(1.0, config.lease_seconds / 4)
        self.handover_timeout_seconds = 3.0 * config.lease_seconds
        self.lease_id: int | None = None
        self.lease_ok_at = 0.0  # clock() when the last acknowledged keep-alive was sent
        self.fences: dict[str, int] = {}  # camera -> mod revision of our owner key
        self.owned: set[str] = set()
        self.ready_written: set[str] = set()
        self.release_waiting_since: dict[str, float] = {}
        self.view = View()
        self._cleanup: set[str] = set()  # claim keys to delete once we own the camera
        self.log = get_logger().bind(node=self.node)
        self._lock = asyncio.Lock()  # one step (or lease-loss stop) at a time

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        guard = asyncio.create_task(self._guard(stop), name="cluster-guard")
        unreachable_logged = False
        try:
            while not stop.is_set():
                try:
                    await self.step()
                    if unreachable_logged:
                        self.log.info("cluster_etcd_reachable", endpoint=self.etcd.endpoint)
                    unreachable_logged = False
                except EtcdUnavailable as exc:
                    if not unreachable_logged:
                        self.log.warning("cluster_etcd_unreachable", error=str(exc))
                    unreachable_logged = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.tick_seconds)
        finally:
            guard.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await guard
            await self.leave()

    async def leave(self) -> None:
        """Clean exit: stop recorders, revoke the lease (its keys go at once, not at expiry)."""
        await self._lose("leaving")
        await self.etcd.close()

    async def _guard(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.check_lease()
            await asyncio.sleep(min(0.25, self.tick_seconds))

    async def check_lease(self) -> bool:
        """Stop every recorder if the lease may be about to expire in etcd; False then."""
        if self.lease_id is not None and self.clock() - self.lease_ok_at > self.safe_seconds:
            age = self.clock() - self.lease_ok_at
            self.log.error("cluster_lease_lost", seconds_since_keepalive=round(age, 3))
            await self._lose("lease_lost", revoke=False)
            return False
        return True

    async def step(self) -> None:
        """One convergence step (the loop's body; tests drive it directly)."""
        async with self._lock:
            await self._step()

    async def _lose(self, reason: str, revoke: bool = True) -> None:
        """Stop every recorder of this node and forget the lease."""
        running = sorted(self.recorders.running())
        lease, self.lease_id = self.lease_id, None
        if running:
            self.log.warning("cluster_stop_all", reason=reason, cameras=len(running))
            await self.recorders.stop(running)
        self.owned.clear()
        self.fences.clear()
        self.ready_written.clear()
        self.release_waiting_since.clear()
        for camera in self.cameras():
            metrics.camera_owned.labels(camera).set(0)
        if revoke and lease is not None:
            with contextlib.suppress(EtcdUnavailable):
                await self.etcd.revoke(lease)

    # -- one step ------------------------------------------------------------------------------

    async def _ensure_lease(self) -> int:
        if self.lease_id is None:
            sent = self.clock()
            lease = await self.etcd.grant(self.lease_seconds)
            member = json.dumps({"advertise": self.config.advertise, "capacity": self.config.capacity})
            await self.etcd.put(MEMBERS + self.node, member, lease)
            await self.etcd.put(NODES + self.node, self.config.advertise)  # outlives the node
            self.lease_id, self.lease_ok_at = lease, sent
            self.log.info("cluster_joined", lease=lease, endpoint=self.etcd.endpoint)
        elif self.clock() - self.lease_ok_at >= self.keepalive_seconds:
            sent = self.clock()
            ttl = await self.etcd.keepalive(self.lease_id)
            if ttl <= 0:
                self.log.error("cluster_lease_expired")
                await self._lose("lease_expired", revoke=False)
                return await self._ensure_lease()
            self.lease_ok_at = sent
        assert self.lease_id is not None
        return self.lease_id

    async def _step(self) -> None:
        lease = await self._ensure_lease()
        view = await read_view(self.etcd)
        self.view = view
        cameras = self.cameras()
        placement = place(cameras, {m.node: m.capacity for m in view.members.values()})
        metrics.cluster_members.set(len(view.members))
        metrics.cluster_unassigned.set(sum(1 for c in cameras if c not in view.owners))
        release: list[str] = []
        for camera in cameras:
            if self.lease_id != lease:
                return  # the guard gave the lease up while this step waited on etcd
            if await self._converge(camera, placement.get(camera), view, lease):
                release.append(camera)
        release += sorted(self.recorders.running() - set(cameras))  # removed from the config
        if release:
            await self._release(release, view)
        for camera in sorted(self._cleanup):
            await self.etcd.delete(f"{READY}{camera}/{self.node}")
            self._cleanup.discard(camera)
        for camera in cameras:
            metrics.camera_owned.labels(camera).set(1 if camera in self.owned else 0)

    async def _converge(self, camera: str, target: str | None, view: View, lease: int) -> bool:
        """Bring ``camera`` one step towards ``target``; True if this node must let it go (the
        caller stops all of those together: a recorder takes a moment to close its segment)."""
        owner = view.owners.get(camera)
        if owner is not None and owner.value == self.node and owner.lease != lease:
            # Our key from a previous lease (a restart, or a cut shorter than the lease): drop it.
            await self.etcd.delete_if(OWNERS + camera, owner.mod_revision)
            owner = None
        mine = owner is not None and owner.value == self.node
        running = camera in self.recorders.running()
        if target == self.node:
            if owner is None:
                created, kv = await self.etcd.create(OWNERS + camera, self.node, lease)
                if created and kv is not None:
                    self._own(camera, kv, lease)
                    return False
                owner = kv
                mine = False
            if mine:
                assert owner is not None
                self._own(camera, owner, lease)
                return False
            # Another node owns it: claim (the claim key's revision fences our rows meanwhile),
            # record alongside, and say "ready" once frames flow: the owner then lets go.
            claim = f"{READY}{camera}/{self.node}"
            if not running:
                self.log.info("cluster_camera_joining", camera=camera, owner=owner.value if owner else None)
                self.fences[camera] = await self.etcd.put(claim, CLAIM_STARTING, lease)
                self.ready_written.add(camera)
                if self.lease_id == lease:  # the guard may have given the lease up meanwhile
                    self.recorders.start(camera)
            elif self.recorders.has_frames(camera) and camera not in view.ready_now.get(self.node, set()):
                await self.etcd.put(claim, CLAIM_READY, lease)
            return False
        if mine:
            assert owner is not None
            self.fences[camera] = owner.mod_revision
            if target is None:
                return False  # nobody else has room: keep recording it
            since = self.release_waiting_since.setdefault(camera, self.clock())
            waited = self.clock() - since
            if target in view.ready.get(camera, set()) or waited > self.handover_timeout_seconds:
                self.log.info("cluster_camera_handover", camera=camera, to=target, waited=round(waited, 3))
                return True
            return False
        return running  # joining a camera no longer ours, or ownership lost to another node

    def _own(self, camera: str, kv: KeyValue, lease: int) -> None:
        if camera not in self.owned:
            self.log.info("cluster_camera_owned", camera=camera, fence=kv.mod_revision)
        self.owned.add(camera)
        self.fences[camera] = kv.mod_revision
        self.release_waiting_since.pop(camera, None)
        if camera in self.ready_written:
            self.ready_written.discard(camera)
            self._cleanup.add(camera)
        if camera not in self.recorders.running() and self.lease_id == lease:
            self.recorders.start(camera)

    async def _release(self, cameras: list[str], view: View) -> None:
        """Stop these recorders (their segments close with our fence), then drop our keys."""
        await self.recorders.stop(cameras)
        for camera in cameras:
            owner = view.owners.get(camera)
            if camera in self.owned and owner is not None and owner.value == self.node:
                await self.etcd.delete_if(OWNERS + camera, owner.mod_revision)
            if camera in self.ready_written:
                await self.etcd.delete(f"{READY}{camera}/{self.node}")
            self.owned.discard(camera)
            self.ready_written.discard(camera)
            self.fences.pop(camera, None)
            self.release_waiting_since.pop(camera, None)

    # -- for the index wrapper and status ------------------------------------------------------

    def fence(self, camera: str) -> int:
        """The fencing token to stamp on ``camera``'s next segment row (0: none yet)."""
        return self.fences.get(camera, 0)


def status_document(view: View, cameras: list[str]) -> dict[str, object]:
    """``csud cluster status --json`` (DESIGN.md, "Cluster")."""
    owned: dict[str, int] = {}
    table: dict[str, str | None] = {}
    for camera in sorted(cameras):
        kv = view.owners.get(camera)
        table[camera] = kv.value if kv is not None else None
        if kv is not None:
            owned[kv.value] = owned.get(kv.value, 0) + 1
    members = [
        {"node": m.node, "advertise": m.advertise, "cameras": owned.get(m.node, 0), "capacity": m.capacity}
        for m in sorted(view.members.values(), key=lambda m: m.node)
    ]
    return {"members": members, "cameras": table}
