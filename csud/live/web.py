"""The operator-facing live-viewing server (aiohttp): login, the wall, the camera list, streams.

Routes (DESIGN.md, "Live viewing"): ``POST /login``, ``POST /logout``, ``GET /`` (the wall; it
shows the login form when not logged in), ``GET /api/cameras``, ``GET /live/{camera}``
(WebSocket), ``GET /static/...``. Metrics and health stay on the daemon's loopback listener.

Rights are decided by :meth:`LiveServer.refusal`, at the WebSocket and again every
:data:`RECHECK_SECONDS` for every open stream: a camera streams only if its commune is ``live``
and listed on the operator's account, the operator is enabled and the session is valid (not
expired, opened before no password change). A config reload or ``csud operator disable``
therefore closes a stream within a second.

Sessions live in memory (a restart logs everyone out). Login attempts are limited per client
address and per user name (:data:`LOGIN_MAX_FAILURES` in :data:`LOGIN_WINDOW_SECONDS`).
Refusals of an authenticated operator are journaled (``live_view_refused``); requests without a
session are only logged, so that nobody can fill the journal without an account.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import ssl
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from aiohttp import WSMsgType, web

from csud.config import Settings
from csud.errors import ConfigError, CsudError
from csud.live.fanout import REPLAYED, CameraFeed, Viewer, event
from csud.log import get_logger
from csud.service import metrics
from csud.store.index import Index
from csud.store.journal import LIVE_VIEW_ENDED, LIVE_VIEW_REFUSED, LIVE_VIEW_STARTED
from csud.store.operators import Operator, Operators, check_password

COOKIE = "csud_session"
RECHECK_SECONDS = 0.25
LOGIN_MAX_FAILURES = 5
LOGIN_WINDOW_SECONDS = 60.0
WS_CLOSE_REFUSED = 4403  # application close code: a right was withdrawn while watching
WS_CLOSE_POLICY = 1008  # RFC 6455: the viewer sent data; viewers send nothing
WS_HEARTBEAT_SECONDS = 20.0  # no pong within half of it: the connection is dropped
WS_CLOSE_TIMEOUT_SECONDS = 2.0  # for the client's close reply, then the socket is aborted
MAX_VIEWS_PER_OPERATOR = 64  # open streams of one operator (all tabs): a 64-tile wall is plenty
MAX_VIEWS = 1000  # open streams in all: each may hold its queue and a socket buffer (~5 MB)
MAX_SESSIONS_PER_OPERATOR = 16  # a new login beyond it ends that operator's oldest session
NS_PER_SECOND = 1_000_000_000
SEND_HIGH_WATER_BYTES = 1024 * 1024  # unsent bytes in a viewer's socket before its sender waits
SEND_DRAIN_POLL_SECONDS = 0.02
WS_OPCODE_TEXT_FIN = 0x81
WS_OPCODE_BINARY_FIN = 0x82
_DUMMY_HASH = "scrypt$32768$8$1$00$00"  # checked for unknown users too: the same time either way


@dataclass
class Session:
    operator: str
    generation: int
    expires: float  # monotonic


@dataclass(eq=False)  # identity: kept in a set
class View:
    operator: str
    camera: str
    commune: str
    client: str
    session: str
    viewer: Viewer
    started_ns: int
    bytes: int = 0
    refusal: str = ""
    close_code: int = 0  # set when the viewer broke the protocol (1008)


class _Socket:
    """Writes a viewer's messages as WebSocket frames straight into its transport.

    :meth:`offer` is the viewer's :data:`~csud.live.fanout.Sink`, called by the fan-out on the
    recorder's path: it writes only while the socket's unsent bytes are under
    :data:`SEND_HIGH_WATER_BYTES` (else the message is queued and the sender task takes over),
    never raises and never blocks. The frame header of a server message is a few bytes (no mask,
    no compression), written with the message in one ``writelines``.
    """

    __slots__ = ("clock_ns", "latency", "transport", "view", "ws")

    def __init__(self, transport: Any, ws: web.WebSocketResponse, view: View, clock_ns: Callable[[], int]):
        self.transport = transport
        self.ws = ws
        self.view = view
        self.clock_ns = clock_ns
        self.latency = metrics.live_send_latency

    def usable(self) -> bool:
        return not (self.ws.closed or self.transport is None or self.transport.is_closing())

    def backed_up(self) -> bool:
        return int(self.transport.get_write_buffer_size()) > SEND_HIGH_WATER_BYTES

    def offer(self, message: bytes | str, received_ns: int) -> bool:
        """The fan-out's path: its latency is observed once per frame (:meth:`LiveServer._sent`)."""
        if not self.usable() or self.backed_up():
            return False
        return self.write(message, 0)

    def write(self, message: bytes | str, received_ns: int) -> bool:
        """``received_ns`` > :data:`REPLAYED`: a live frame sent late (from the queue), observed."""
        data = message.encode() if isinstance(message, str) else message
        opcode = WS_OPCODE_TEXT_FIN if isinstance(message, str) else WS_OPCODE_BINARY_FIN
        try:
            self.transport.writelines((_ws_header(opcode, len(data)), data))
        except (OSError, RuntimeError) as exc:  # never into the recorder: this viewer ends
            self.view.viewer.close(f"send_failed: {exc.__class__.__name__}")
            return False
        self.view.bytes += len(data)
        if received_ns > REPLAYED:
            self.latency.observe((self.clock_ns() - received_ns) / NS_PER_SECOND)
        return True


@dataclass
class _Limiter:
    failures: dict[str, deque[float]] = field(default_factory=dict)

    def blocked(self, key: str, now: float) -> bool:
        times = self.failures.get(key)
        while times and now - times[0] > LOGIN_WINDOW_SECONDS:
            times.popleft()
        return times is not None and len(times) >= LOGIN_MAX_FAILURES

    def fail(self, key: str, now: float) -> None:
        self.failures.setdefault(key, deque()).append(now)
        if len(self.failures) > 10_000:  # bounded: forget the oldest keys
            for old in list(self.failures)[:1000]:
                del self.failures[old]


class LiveServer:
    """Owns the feeds (one per recorded camera), the sessions and the open views."""

    def __init__(
        self,
        settings: Settings,
        index: Index,
        camera_up: Callable[[str], bool],
        monotonic: Callable[[], float] = time.monotonic,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.settings = settings
        self.operators = Operators(index)
        self.index = index
        self.camera_up = camera_up
        self.monotonic = monotonic
        self.clock_ns = clock_ns
        self.feeds: dict[str, CameraFeed] = {}
        self.sessions: dict[str, Session] = {}
        self.views: set[View] = set()
        self._limiter = _Limiter()
        self._operators: dict[str, Operator] = {}
        self._up: dict[str, bool] = {}
        self._runner: web.AppRunner | None = None
        self.tls = settings.web.tls_cert is not None
        self._recheck_task: asyncio.Task[None] | None = None
        self.cluster: Any = None  # csud.cluster.live.ClusterLive in a cluster: other nodes' cameras
        self.log = get_logger(component="live")

    # -- the recorder's side -------------------------------------------------------------------

    def feed(self, camera_id: str) -> CameraFeed:
        feed = self.feeds.get(camera_id)
        if feed is None:
            feed = self.feeds[camera_id] = CameraFeed(camera_id, metrics.live_frames_skipped.inc, self._sent)
        return feed

    def _sent(self, received_ns: int) -> None:
        """A frame reached every viewer's socket that was not behind: one latency sample."""
        metrics.live_send_latency.observe((self.clock_ns() - received_ns) / NS_PER_SECOND)

    def frame_sink(self, camera_id: str) -> Callable[..., None]:
        """What a recorder calls once per complete access unit (:data:`csud.recording.pipeline.FrameTap`:
        ``(au, codec, sets, received_ns, reorder_ns)``)."""
        return self.feed(camera_id).on_frame

    def update_settings(self, settings: Settings) -> None:
        """A reload was applied: re-check every open stream now."""
        self.settings = settings
        self._recheck()

    # -- rights ----------------------------------------------------------------------------------

    def refusal(self, operator: Operator | None, camera_id: str) -> tuple[int, str, str]:
        """(HTTP status, reason, commune); status 0 when ``operator`` may watch ``camera_id``."""
        try:
            camera = self.settings.camera(camera_id)
        except KeyError:
            return 404, "unknown_camera", ""
        commune = self.settings.commune(camera.commune)
        if operator is None:
            return 401, "no_session", commune.id
        if not operator.enabled:
            return 403, "operator_disabled", commune.id
        if commune.service != "live":
            return 403, "storage_commune", commune.id
        if commune.id not in operator.communes:
            return 403, "commune_not_authorised", commune.id
        if not camera.enabled:
            return 404, "camera_disabled", commune.id
        return 0, "", commune.id

    def _session(self, request: web.Request) -> tuple[str, Session] | None:
        token = request.cookies.get(COOKIE, "")
        session = self.sessions.get(token)
        if session is None:
            return None
        if session.expires <= self.monotonic():
            del self.sessions[token]
            return None
        return token, session

    async def _operator(self, request: web.Request) -> Operator | None:
        """The operator of this request's valid session, fresh from the index; else None."""
        found = self._session(request)
        if found is None:
            return None
        token, session = found
        operator = await asyncio.to_thread(self.operators.get, session.operator)
        if operator is None or not operator.enabled or operator.generation != session.generation:
            self.sessions.pop(token, None)
            return None
        return operator

    # -- lifecycle ---------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[_security_headers])
        app.router.add_get("/", self._wall)
        app.router.add_post("/login", self._login)
        app.router.add_post("/logout", self._logout)
        app.router.add_get("/api/cameras", self._cameras)
        app.router.add_get("/live/{camera}", self._live)
        app.router.add_get("/static/{name}", self._static)
        return app

    async def start(self) -> None:
        web_cfg = self.settings.web
        host, _, port = web_cfg.listen.rpartition(":")
        context = None
        if web_cfg.tls_cert is not None and web_cfg.tls_key is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            try:
                context.load_cert_chain(web_cfg.tls_cert, web_cfg.tls_key)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"web.tls_cert: cannot load {web_cfg.tls_cert}: {exc}") from None
        self.tls = context is not None
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host.strip("[]"), int(port), ssl_context=context)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            raise CsudError(f"web.listen {web_cfg.listen}: cannot listen: {exc.strerror or exc}") from None
        self._recheck_task = asyncio.create_task(self._recheck_loop(), name="live-recheck")
        self.log.info("live_web_started", listen=web_cfg.listen, tls=self.tls)

    async def close(self) -> None:
        if self._recheck_task is not None:
            self._recheck_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recheck_task
        for view in list(self.views):
            view.viewer.close("server_stopping")
        if self._runner is not None:
            await self._runner.cleanup()  # waits for the view handlers, which journal their end

    def _purge_sessions(self, now: float) -> None:
        for token in [t for t, s in self.sessions.items() if s.expires <= now]:
            del self.sessions[token]

    async def _recheck_loop(self) -> None:
        while True:
            await asyncio.sleep(RECHECK_SECONDS)
            self._purge_sessions(self.monotonic())  # expired sessions do not pile up unused
            if not self.views:
                continue
            try:
                ops = await asyncio.to_thread(self.operators.all)
            except CsudError as exc:
                self.log.warning("live_recheck_failed", error=str(exc))
                continue
            self._operators = {op.id: op for op in ops}
            self._recheck()

    def _recheck(self) -> None:
        """Close every open view that is no longer allowed; tell viewers when a camera goes up/down."""
        now = self.monotonic()
        for view in list(self.views):
            session = self.sessions.get(view.session)
            operator = self._operators.get(view.operator)
            if session is None or session.expires <= now:
                reason = "session_expired"
            elif operator is not None and operator.generation != session.generation:
                reason = "operator_disabled" if not operator.enabled else "password_changed"
            elif operator is None:
                reason = "operator_removed"
            else:
                status, reason, _ = self.refusal(operator, view.camera)
                if status == 404:
                    reason = "camera_removed"
            if reason and not view.viewer.closed:
                view.refusal = reason  # the sender says why ("closed" event), then closes 4403
                view.viewer.close(reason)
        for camera_id, feed in self.feeds.items():
            up = self.camera_up(camera_id)
            if self._up.get(camera_id) != up:
                self._up[camera_id] = up
                for viewer in feed.viewers:
                    viewer.push(event("camera", up=up))

    # -- handlers ------------------------------------------------------------------------------------

    async def _wall(self, request: web.Request) -> web.Response:
        return web.Response(body=_asset("wall.html"), content_type="text/html", charset="utf-8")

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        types = {"wall.js": "application/javascript", "wall.css": "text/css"}
        if name not in types:
            raise web.HTTPNotFound()
        return web.Response(body=_asset(name), content_type=types[name], charset="utf-8")

    async def _login(self, request: web.Request) -> web.Response:
        if not _same_origin(request):
            raise web.HTTPForbidden(text="cross-origin login refused\n")
        form = await request.post()
        username, password = str(form.get("username", "")), str(form.get("password", ""))
        client = request.remote or "?"
        now = self.monotonic()
        if self._limiter.blocked(f"ip:{client}", now) or self._limiter.blocked(f"user:{username}", now):
            self.log.warning("live_login_rate_limited", operator=username, client=client)
            return web.Response(
                status=429, text="too many attempts; wait a minute\n", headers={"Retry-After": "60"}
            )
        operator = await asyncio.to_thread(self.operators.get, username)
        stored = operator.password_hash if operator is not None else _DUMMY_HASH
        ok = await asyncio.to_thread(check_password, password, stored)
        if operator is None or not ok or not operator.enabled:
            self._limiter.fail(f"ip:{client}", now)
            self._limiter.fail(f"user:{username}", now)
            self.log.warning("live_login_failed", operator=username, client=client)
            return web.Response(status=401, text="wrong user name or password\n")
        token = secrets.token_urlsafe(32)
        minutes = self.settings.web.session_minutes
        self._purge_sessions(now)
        mine = [t for t, s in self.sessions.items() if s.operator == operator.id]  # oldest first
        for old in mine[: max(0, len(mine) - MAX_SESSIONS_PER_OPERATOR + 1)]:
            del self.sessions[old]  # its streams close at the next recheck ("session_expired")
        self.sessions[token] = Session(operator.id, operator.generation, now + minutes * 60)
        self.log.info("live_login", operator=operator.id, client=client)
        response = web.Response(status=303, headers={"Location": "/"})
        response.set_cookie(
            COOKIE, token, httponly=True, samesite="Strict", secure=self.tls, path="/", max_age=minutes * 60
        )
        return response

    async def _logout(self, request: web.Request) -> web.Response:
        found = self._session(request)
        if found is not None:
            self.sessions.pop(found[0], None)
        response = web.Response(status=303, headers={"Location": "/"})
        response.del_cookie(COOKIE, path="/")
        return response

    async def _cameras(self, request: web.Request) -> web.Response:
        operator = await self._operator(request)
        if operator is None:
            return web.json_response({"error": "not logged in"}, status=401)
        out = []
        elsewhere = await self.cluster.up_map() if self.cluster is not None else {}  # other owners
        for camera in self.settings.cameras:
            if self.refusal(operator, camera.id)[0] == 0:
                commune = self.settings.commune(camera.commune)
                out.append(
                    {
                        "id": camera.id,
                        "name": camera.name or camera.id,
                        "commune": commune.name,
                        "up": elsewhere.get(camera.id, self.camera_up(camera.id)),
                    }
                )
        return web.json_response(out)

    async def _live(self, request: web.Request) -> web.StreamResponse:
        camera_id = request.match_info["camera"]
        client = request.remote or "?"
        if not _same_origin(request):
            self.log.warning("live_view_refused", camera=camera_id, client=client, reason="origin")
            raise web.HTTPForbidden(text="cross-origin WebSocket refused\n")
        operator = await self._operator(request)
        status, reason, commune = self.refusal(operator, camera_id)
        if status:
            self.log.warning("live_view_refused", camera=camera_id, client=client, reason=reason)
            if operator is not None:
                await self._journal(
                    LIVE_VIEW_REFUSED, operator.id, camera_id, commune,
                    {"operator": operator.id, "client": client}, reason=reason,
                )  # fmt: skip
            raise {401: web.HTTPUnauthorized, 403: web.HTTPForbidden}.get(status, web.HTTPNotFound)(
                text=f"{reason}\n"
            )
        assert operator is not None
        found = self._session(request)
        assert found is not None
        mine = sum(1 for v in self.views if v.operator == operator.id)
        if mine >= MAX_VIEWS_PER_OPERATOR or len(self.views) >= MAX_VIEWS:
            # Capacity, not a right: logged, not journaled (a wall retrying would fill the journal).
            self.log.warning("live_view_refused", camera=camera_id, client=client, reason="too_many_views")
            raise web.HTTPTooManyRequests(text="too_many_views\n", headers={"Retry-After": "15"})
        view = View(operator.id, camera_id, commune, client, found[0], Viewer(), self.clock_ns())
        self.views.add(view)  # counted from now on: concurrent opens cannot pass the limit
        started = {"operator": operator.id, "client": client}
        owner = self.cluster.remote_owner(camera_id) if self.cluster is not None else None
        if owner is not None:  # recorded by another node: relayed from it (csud.cluster.live)
            started["node"] = owner
        try:
            journaled = await self._journal(LIVE_VIEW_STARTED, operator.id, camera_id, commune, started)
        except BaseException:
            self.views.discard(view)
            raise
        if not journaled:  # a consultation that cannot be traced does not happen
            self.views.discard(view)
            raise web.HTTPServiceUnavailable(text="journal_unavailable\n")
        # No permessage-deflate: video does not compress, and deflating every frame costs CPU.
        ws = web.WebSocketResponse(
            heartbeat=WS_HEARTBEAT_SECONDS,
            max_msg_size=4096,
            compress=False,
            timeout=WS_CLOSE_TIMEOUT_SECONDS,
        )
        sock = _Socket(request.transport, ws, view, self.clock_ns)
        view.viewer.sink = sock.offer
        self._operators[operator.id] = operator
        metrics.live_viewers.labels(camera_id).inc()
        feed = self.feed(camera_id)
        tasks: list[asyncio.Task[None]] = []
        try:
            await ws.prepare(request)
            self.log.info("live_view_started", operator=operator.id, camera=camera_id, client=client)
            if owner is not None:
                tasks.append(asyncio.create_task(self.cluster.relay(owner, camera_id, operator, sock)))
            else:
                feed.attach(view.viewer)
                if feed.track is None or not self.camera_up(camera_id):
                    view.viewer.push(event("camera", up=self.camera_up(camera_id)))
            tasks.append(asyncio.create_task(self._read(ws, view.viewer, view)))
            await self._send(view, sock)
        finally:
            feed.detach(view.viewer)
            view.viewer.close(view.viewer.close_reason or "ended")
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self.views.discard(view)
            metrics.live_viewers.labels(camera_id).dec()
            if not ws.closed and ws.prepared:
                code = view.close_code or (WS_CLOSE_REFUSED if view.refusal else 1000)
                with contextlib.suppress(Exception):
                    await ws.close(
                        code=code, message=(view.refusal or view.viewer.close_reason or "bye").encode()
                    )
            transport = request.transport
            if transport is not None and transport.get_write_buffer_size():
                transport.abort()  # a client that stopped reading: free its unsent bytes now
            seconds = round((self.clock_ns() - view.started_ns) / NS_PER_SECOND, 3)
            details: dict[str, Any] = {
                "operator": operator.id, "client": client, "duration_seconds": seconds, "bytes": view.bytes,
                "skipped_frames": view.viewer.skipped_total,
            }  # fmt: skip
            reason = view.refusal or view.viewer.close_reason
            await asyncio.shield(
                self._journal(LIVE_VIEW_ENDED, operator.id, camera_id, commune, details, reason)
            )
            self.log.info("live_view_ended", operator=operator.id, camera=camera_id, seconds=seconds)
        return ws

    async def _send(self, view: View, sock: _Socket) -> None:
        """Drain what the viewer's queue holds while its socket is backed up.

        The fan-out writes straight to the socket while the queue is empty (:class:`_Socket`);
        this task wakes only for a viewer that has fallen behind. Back-pressure: past
        :data:`SEND_HIGH_WATER_BYTES` unsent, wait; the viewer's bounded queue fills meanwhile
        and the fan-out makes it skip to a keyframe.
        """
        viewer = view.viewer
        while await viewer.wait():
            # Queued because the socket was backed up: wait for it to drain below the mark first.
            while sock.backed_up():
                if not sock.usable() or viewer.closed:
                    return
                await asyncio.sleep(SEND_DRAIN_POLL_SECONDS)
            if viewer.closed or not sock.usable():
                break
            if viewer.queued_bytes and not sock.write(*viewer.pop()):  # empty: it skipped meanwhile
                break
        # A refusal's "closed" event: said once, before the close.
        if view.refusal and sock.usable():
            sock.write(event("closed", reason=view.refusal), 0)

    async def _read(self, ws: web.WebSocketResponse, viewer: Viewer, view: View | None = None) -> None:
        """Viewers send nothing (the wall never does): a data message ends the stream (1008),
        so that a hostile client cannot make the server read for it; the loop notices the close."""
        async for msg in ws:
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                if view is not None:
                    view.close_code = WS_CLOSE_POLICY
                viewer.close(viewer.close_reason or "client_sent_data")
                return
            if msg.type == WSMsgType.ERROR:  # e.g. no pong within the heartbeat: a client gone silent
                viewer.close(viewer.close_reason or "client_unresponsive")
                return
            if msg.type == WSMsgType.CLOSE:
                break
        viewer.close(viewer.close_reason or "client_closed")

    async def _journal(
        self, kind: str, operator: str, camera: str, commune: str, details: dict[str, Any], reason: str = ""
    ) -> bool:
        try:
            await asyncio.to_thread(
                self.index.append_journal, kind, now_ns=self.clock_ns(), actor=f"operator:{operator}",
                camera=camera, commune=commune or None, reason=reason or None, details=details,
            )  # fmt: skip
        except CsudError as exc:
            self.log.error("live_journal_failed", kind=kind, error=str(exc))
            return False
        return True


def _ws_header(opcode: int, size: int) -> bytes:
    """RFC 6455 5.2: FIN + opcode, unmasked (server to client), 7/16/64-bit length."""
    if size < 126:
        return bytes((opcode, size))
    if size < 1 << 16:
        return struct.pack(">BBH", opcode, 126, size)
    return struct.pack(">BBQ", opcode, 127, size)


def _same_origin(request: web.Request) -> bool:
    """A browser's Origin must be this server; clients that send none (scripts) carry no
    ambient credentials to abuse, and still need the session cookie."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return origin in (f"{request.scheme}://{request.host}", f"https://{request.host}")


@web.middleware
async def _security_headers(request: web.Request, handler: Any) -> web.StreamResponse:
    response: web.StreamResponse = await handler(request)
    if response.prepared:  # a WebSocket: its headers are long sent
        return response
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; media-src 'self' blob:; connect-src 'self'; img-src 'self' data:",
    )
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def _asset(name: str) -> bytes:
    return resources.files("csud.live").joinpath("static", name).read_bytes()
