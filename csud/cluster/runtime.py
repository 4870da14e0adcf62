"""The cluster inside ``csud run``: the node loop, the node API and the fenced index, wired to the
daemon through three Daemon-level calls only (start a camera, stop cameras, is it receiving).

Kept apart from :mod:`csud.service.daemon` so that the daemon's own edit stays a few lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from csud.cluster.api import INDEX_FILENAME, NodeApi
from csud.cluster.live import ClusterLive, PeerLive
from csud.cluster.node import ClusterNode
from csud.config import CameraConfig, ClusterConfig, CommuneConfig, LoadedConfig, Settings
from csud.recording.sink import IndexService
from csud.store.index import Index


class Daemon(Protocol):
    """What this module uses of :class:`csud.service.daemon.Daemon` (not imported: the daemon
    imports this module)."""

    root: Path
    loaded: LoadedConfig
    live: Any  # csud.live.web.LiveServer when [web] listen is set, else None

    @property
    def cameras(self) -> Mapping[str, Any]: ...  # camera id -> running recorder (``.recorder.stats``)

    def _start_camera(self, camera: CameraConfig, commune: CommuneConfig, password: str | None) -> None: ...

    async def _stop_cameras(self, camera_ids: list[str]) -> None: ...


# The new owner of a moved camera says "ready" once its recorder has accepted a frame into a
# segment, i.e. after its first keyframe (a frame received and not dropped while waiting for a
# keyframe), plus this margin for the first fragment to be under way. The old owner then lets
# go: make-before-break, overlapping by about one GOP and two ticks.
READY_MARGIN_SECONDS = 0.5


class FencedIndexService(IndexService):
    """The index, stamping every segment row with this node and its fencing token."""

    def __init__(self, index: Index, node: str, fence_of: Any) -> None:
        super().__init__(index)
        self.node = node
        self.fence_of = fence_of

    async def add_segment(self, camera: str, commune: str, info: Any, *args: Any, **kwargs: Any) -> int:
        fence = int(self.fence_of(camera))
        row_id = await super().add_segment(camera, commune, info, *args, **kwargs)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.index.set_segment_fence, row_id, self.node, fence)
        return row_id


class DaemonRecorders:
    """:class:`csud.cluster.node.Recorders` over the daemon's start/stop of a camera."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self._frames_since: dict[str, float] = {}

    def start(self, camera: str) -> None:
        settings = self.daemon.loaded.settings
        config = settings.camera(camera)
        self._frames_since.pop(camera, None)
        self.daemon._start_camera(config, settings.commune(config.commune), config.resolve_password())

    async def stop(self, cameras: list[str]) -> None:
        for camera in cameras:
            self._frames_since.pop(camera, None)
        await self.daemon._stop_cameras(cameras)

    def has_frames(self, camera: str) -> bool:
        """True once the camera's recorder records: its first keyframe arrived (and a margin)."""
        running = self.daemon.cameras.get(camera)
        if running is None:
            return False
        stats = running.recorder.stats
        if stats.frames_received <= sum(stats.dropped_frames.values()):
            return False  # nothing accepted yet: still waiting for a keyframe
        since = self._frames_since.setdefault(camera, time.monotonic())
        return time.monotonic() - since >= READY_MARGIN_SECONDS

    def running(self) -> set[str]:
        return set(self.daemon.cameras)


class ClusterRuntime:
    def __init__(self, daemon: Daemon, config: ClusterConfig) -> None:
        self.daemon = daemon
        self.config = config
        self.secret = config.read_secret()  # ConfigError (exit 2) before anything starts
        self.node = ClusterNode(config, self._cameras, DaemonRecorders(daemon))
        self.api = NodeApi(config.node, daemon.root, self.secret, registre=self._registre)
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self.live: ClusterLive | None = None

    def _registre(self, commune: str, month: str) -> dict[str, Any]:
        return node_registre(self.daemon.loaded.settings, self.daemon.root, commune, month)

    def _cameras(self) -> list[str]:
        return [c.id for c in self.daemon.loaded.settings.cameras if c.enabled]

    def index_service(self, index: Index) -> IndexService:
        return FencedIndexService(index, self.config.node, self.node.fence)

    async def start(self) -> None:
        if self.daemon.live is not None:  # the wall through any node (csud.cluster.live)
            self.live = ClusterLive(self.node, self.secret)
            self.daemon.live.cluster = self.live
            self.api.live = PeerLive(self.daemon.live, self.node.recorders.running)
        host, _, port = self.config.listen.rpartition(":")
        await self.api.start(host, int(port))
        self._task = asyncio.create_task(self.node.run(self._stop), name="cluster-node")

    async def stop(self) -> None:
        """Stop owning cameras (their recorders close their segments), leave, close the API."""
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.api.close()
        if self.live is not None:
            await self.live.close()


def node_registre(settings: Settings, root: Path, commune: str, month: str) -> dict[str, Any]:
    """This node's part of a commune's registre: ``{"recordings", "live_views"}``, exactly as
    ``csud registre --json`` prints it on one node (the same functions)."""
    from csud.cli.retention import _month, _ns, registre_rows
    from csud.live.registre import live_view_rows

    index = Index.open(root / INDEX_FILENAME, readonly=True)
    try:
        rows = registre_rows(settings, index, commune, month)
        zone = settings.site.zone()[0]
        views = live_view_rows(index, commune, *(_ns(m) for m in _month(month, zone)))
    finally:
        index.close()
    return {"recordings": rows, "live_views": views}
