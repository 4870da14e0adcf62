"""Live viewing through any node of a cluster (docs/live.md, docs/cluster.md "Live viewing").

An operator's wall talks to one node (one URL: a session lives in that node's memory). That node
lists every camera the operator may see (the communes are the same config everywhere), with
``up`` asked of each camera's owner, and streams a camera another node records by **relaying**
the owner's stream: the owner's node API serves it to the peer (``GET /v1/live/{camera}``, a
WebSocket, HMAC-signed like every node-API request) from the same fan-out its own viewers use,
so recording never waits for a viewer on either node. The entry node copies each message to the
browser as it comes, waiting while the browser's socket is backed up: TCP then pushes back to
the owner, whose bounded viewer queue skips to a keyframe (``skipped`` event) as for a local
viewer.

Rights are checked, and the view journaled (once), at the entry node, which keeps re-checking
the open stream every :data:`csud.live.web.RECHECK_SECONDS`. The owner re-checks what it can
from the shared config (the camera's commune is ``live`` and among the operator's communes,
sent by the entry node under the signature) and logs the relay with the operator's id.

When the camera moves (handover, failover), the owner ends the relay (``camera_moved``) and the
entry node closes the browser's stream; the wall reconnects, and the new connection goes to
the new owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import aiohttp
from aiohttp import WSMsgType, web

from csud.cluster.api import AUTH_HEADER, sign
from csud.log import get_logger

if TYPE_CHECKING:
    from csud.cluster.node import ClusterNode
    from csud.live.web import LiveServer, _Socket
    from csud.store.operators import Operator

UP_TIMEOUT_SECONDS = 2.0  # a node that does not say within it: its cameras are listed down
UP_CACHE_SECONDS = 1.0  # walls poll the list: one round of questions per second at most
CONNECT_TIMEOUT_SECONDS = 5.0
MOVED_CHECK_SECONDS = 0.5
RELAY_MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # a keyframe's fragment; the owner is a trusted peer
MAX_PEER_STREAMS = 1000  # streams served to other nodes at once (same bound as csud.live.web)
SEND_DRAIN_POLL_SECONDS = 0.02
WS_CLOSE_MOVED = 4409  # the owner no longer records the camera: the wall reconnects elsewhere


class ClusterLive:
    """The entry node's side: who owns a camera, is it up there, relay its stream."""

    def __init__(self, node: ClusterNode, secret: bytes) -> None:
        self.node = node
        self.secret = secret
        self._session: aiohttp.ClientSession | None = None
        self._up: dict[str, bool] = {}
        self._up_at = -1e9
        self._up_lock = asyncio.Lock()
        self.log = get_logger(component="live").bind(node=node.node)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _headers(self, method: str, path_qs: str) -> dict[str, str]:
        return {AUTH_HEADER: sign(self.secret, method, path_qs, time.time())}

    def remote_owner(self, camera: str) -> str | None:
        """The live member that records ``camera`` if it is not this node; else None (local)."""
        kv = self.node.view.owners.get(camera)
        if kv is None or kv.value == self.node.node or kv.value not in self.node.view.members:
            return None
        return kv.value

    async def up_map(self) -> dict[str, bool]:
        """camera -> up, for the cameras other nodes own (asked of each, cached for a second)."""
        async with self._up_lock:
            if time.monotonic() - self._up_at < UP_CACHE_SECONDS:
                return self._up
            view = self.node.view
            others = {n: m.advertise for n, m in view.members.items() if n != self.node.node}
            answers = await asyncio.gather(*(self._ask_up(a) for a in others.values()))
            up: dict[str, bool] = {}
            for node, answer in zip(others, answers, strict=True):
                for camera, kv in view.owners.items():
                    if kv.value == node:
                        up[camera] = bool(answer.get(camera, False))  # unreachable: down
            self._up, self._up_at = up, time.monotonic()
            return up

    async def _ask_up(self, advertise: str) -> dict[str, Any]:
        path = "/v1/live-up"
        try:
            async with self._client().get(
                advertise.rstrip("/") + path,
                headers=self._headers("GET", path),
                timeout=aiohttp.ClientTimeout(total=UP_TIMEOUT_SECONDS),
            ) as resp:
                if resp.status != 200:
                    return {}
                doc: dict[str, Any] = await resp.json()
                return doc
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
            return {}

    async def relay(self, owner: str, camera: str, operator: Operator, sock: _Socket) -> None:
        """Copy ``owner``'s stream of ``camera`` to ``sock`` until either side ends; then close
        the viewer with the reason (the web shell closes the browser's stream)."""
        viewer = sock.view.viewer
        member = self.node.view.members.get(owner)
        if member is None:
            viewer.close("owner_unreachable")
            return
        query = urlencode({"operator": operator.id, "communes": ",".join(operator.communes)})
        path_qs = f"/v1/live/{quote(camera, safe='')}?{query}"
        watcher = asyncio.create_task(self._watch_owner(owner, camera, viewer))
        reason = "owner_closed"
        try:
            async with self._client().ws_connect(
                member.advertise.rstrip("/") + path_qs,
                headers=self._headers("GET", path_qs),
                heartbeat=20.0,
                max_msg_size=RELAY_MAX_MESSAGE_BYTES,
                timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
                receive_timeout=None,
            ) as ws:
                async for msg in ws:
                    if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                        break
                    while sock.backed_up():  # the browser is slow: let TCP push back to the owner
                        if not sock.usable() or viewer.closed:
                            return
                        await asyncio.sleep(SEND_DRAIN_POLL_SECONDS)
                    if viewer.closed or not sock.usable() or not sock.write(msg.data, 0):
                        return
                if ws.close_code == WS_CLOSE_MOVED:
                    reason = "camera_moved"
                elif ws.close_code is not None and ws.close_code != 1000:
                    reason = f"owner_closed:{ws.close_code}"
        except aiohttp.WSServerHandshakeError as exc:
            reason = "owner_refused" if exc.status == 403 else f"owner_http_{exc.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            reason = f"owner_unreachable: {type(exc).__name__}"
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        if not viewer.closed:
            self.log.info("live_relay_ended", camera=camera, owner=owner, reason=reason)
            viewer.close(reason)

    async def _watch_owner(self, owner: str, camera: str, viewer: Any) -> None:
        """The owner changed in etcd (it died, or handed the camera over): end this stream."""
        while not viewer.closed:
            await asyncio.sleep(MOVED_CHECK_SECONDS)
            kv = self.node.view.owners.get(camera)
            if kv is None or kv.value != owner:
                viewer.close("camera_moved")


class PeerLive:
    """The owner's side: streams to other nodes from this node's fan-out (node API routes)."""

    def __init__(self, live: LiveServer, running: Callable[[], set[str]]) -> None:
        self.live = live
        self.running = running
        self.streams = 0
        self.log = get_logger(component="live")

    async def up(self, request: web.Request) -> web.Response:
        return web.json_response({c: self.live.camera_up(c) for c in sorted(self.running())})

    async def stream(self, request: web.Request) -> web.StreamResponse:
        from csud.live.fanout import Viewer, event
        from csud.live.web import WS_CLOSE_TIMEOUT_SECONDS, View, _Socket
        from csud.store.operators import Operator

        camera = request.match_info["camera"]
        operator_id = request.query.get("operator", "")
        communes = tuple(c for c in request.query.get("communes", "").split(",") if c)
        peer = Operator(operator_id, operator_id, communes, "", 0, None, 0)
        status, reason, commune = self.live.refusal(peer, camera)
        if status:
            raise {403: web.HTTPForbidden}.get(status, web.HTTPNotFound)(text=f"{reason}\n")
        if camera not in self.running():
            raise web.HTTPConflict(text="camera_not_recorded_here\n")
        if self.streams >= MAX_PEER_STREAMS:
            raise web.HTTPTooManyRequests(text="too_many_views\n")
        ws = web.WebSocketResponse(
            heartbeat=20.0, max_msg_size=4096, compress=False, timeout=WS_CLOSE_TIMEOUT_SECONDS
        )
        view = View(
            operator_id, camera, commune, f"node:{request.remote}", "", Viewer(), self.live.clock_ns()
        )
        sock = _Socket(request.transport, ws, view, self.live.clock_ns)
        view.viewer.sink = sock.offer
        feed = self.live.feed(camera)
        self.streams += 1
        tasks: list[asyncio.Task[None]] = []
        try:
            await ws.prepare(request)
            self.log.info("live_relay_started", operator=operator_id, camera=camera, peer=request.remote)
            feed.attach(view.viewer)
            if feed.track is None or not self.live.camera_up(camera):
                view.viewer.push(event("camera", up=self.live.camera_up(camera)))
            tasks.append(asyncio.create_task(self.live._read(ws, view.viewer, view)))
            tasks.append(asyncio.create_task(self._moved(camera, view.viewer)))
            await self.live._send(view, sock)
        finally:
            self.streams -= 1
            feed.detach(view.viewer)
            view.viewer.close(view.viewer.close_reason or "ended")
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if not ws.closed and ws.prepared:
                code = WS_CLOSE_MOVED if view.viewer.close_reason == "camera_moved" else 1000
                with contextlib.suppress(Exception):
                    await ws.close(code=code, message=view.viewer.close_reason.encode())
            self.log.info(
                "live_relay_ended", operator=operator_id, camera=camera, reason=view.viewer.close_reason
            )
        return ws

    async def _moved(self, camera: str, viewer: Any) -> None:
        while not viewer.closed:
            await asyncio.sleep(MOVED_CHECK_SECONDS)
            if camera not in self.running():
                viewer.close("camera_moved")
