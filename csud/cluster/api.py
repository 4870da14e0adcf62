"""The node API: what one node tells the others about its own store (aiohttp, ``[cluster] listen``).

Every request carries ``X-Csud-Auth: <unix seconds>:<hex HMAC-SHA256>`` of
``"<seconds>\\n<METHOD>\\n<path?query>"`` under the shared secret (``secret_file``): the secret
never travels, a request is good for ``AUTH_WINDOW_SECONDS`` only. Anything else answers 401.

- ``GET /v1/segments?camera=ID[&from_ns=N][&to_ns=N]``: ``{"node", "segments": [row...]}``, each
  row with ``id, camera, commune, start_ns, end_ns, path, bytes, frames, sha256, node, fence``.
- ``GET /v1/segments/{id}/fragments``: ``[{"start_ns", "offset", "size", "frames"}]``.
- ``GET /v1/segments/{id}/file``: the segment file's bytes (``Range`` honoured), for extraction.
- ``POST /v1/holds``: ``{"cameras", "from_ns", "to_ns", "requisition", "officer", "reason",
  "until_ns", "actor"}``: place the same judicial hold on this node's store (journaled here);
  answers ``{"node", "hold"}`` (this node's hold id). The body is covered by the signature.
- ``GET /v1/registre?commune=ID&month=YYYY-MM``: this node's part of the registre
  (``csud registre --json``'s document).
- ``POST /v1/holds/release``: ``{"requisition", "from_ns", "to_ns", "cameras", "created_ns",
  "reason", "actor"}``: release this node's copy of that hold (the same fields identify it on
  every node: a hold placed cluster-wide carries its first node's ``created_ns``); answers
  ``{"node", "released": [ids]}``.
- ``POST /v1/verify-archive``: ``{"camera": ID | null}``: ``csud verify --archive`` on this
  node's store, where the bytes are; failures journaled here. Answers the report's counts and
  the paths that failed.

Reads go through a read-only index connection per request, off the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from csud.errors import CsudError
from csud.store.index import Index

AUTH_HEADER = "X-Csud-Auth"
AUTH_WINDOW_SECONDS = 60
INDEX_FILENAME = "index.sqlite3"  # same name as csud.service.daemon.INDEX_FILENAME


def sign(secret: bytes, method: str, path_qs: str, now: float, body: bytes = b"") -> str:
    seconds = int(now)
    message = f"{seconds}\n{method}\n{path_qs}\n{hashlib.sha256(body).hexdigest()}"
    mac = hmac.new(secret, message.encode(), hashlib.sha256).hexdigest()
    return f"{seconds}:{mac}"


def check(secret: bytes, header: str, method: str, path_qs: str, now: float, body: bytes = b"") -> bool:
    seconds_text, _, mac = header.partition(":")
    if not seconds_text.isdigit() or abs(now - int(seconds_text)) > AUTH_WINDOW_SECONDS:
        return False
    expected = sign(secret, method, path_qs, int(seconds_text), body).partition(":")[2]
    return hmac.compare_digest(expected, mac)


def hold_dict(hold: Any) -> dict[str, Any]:
    """A hold as the node API sends it (every field of :class:`csud.store.holds.HoldRow`)."""
    return {
        "id": hold.id, "cameras": list(hold.cameras), "from_ns": hold.from_ns, "to_ns": hold.to_ns,
        "requisition": hold.requisition, "officer": hold.officer, "reason": hold.reason,
        "until_ns": hold.until_ns, "created_ns": hold.created_ns, "created_by": hold.created_by,
        "released_ns": hold.released_ns, "released_by": hold.released_by,
        "release_reason": hold.release_reason,
    }  # fmt: skip


def segment_rows(index: Index, camera: str, from_ns: int | None, to_ns: int | None) -> list[dict[str, Any]]:
    rows = index.segments(camera, from_ns, to_ns)
    fences = index.segment_fences([r.id for r in rows])
    out = []
    for r in rows:
        node, fence = fences.get(r.id, (None, None))
        out.append(
            {
                "id": r.id,
                "camera": r.camera,
                "commune": r.commune,
                "start_ns": r.start_ns,
                "end_ns": r.end_ns,
                "path": r.path,
                "bytes": r.bytes,
                "frames": r.frames,
                "sha256": r.sha256,
                "node": node,
                "fence": fence,
            }
        )
    return out


class NodeApi:
    def __init__(
        self,
        node: str,
        root: Path,
        secret: bytes,
        registre: Callable[[str, str], dict[str, Any]] | None = None,
    ) -> None:
        self.node = node
        self.root = root
        self.secret = secret
        self.registre = registre  # (commune, month) -> this node's registre (csud.cluster.registre)
        self.live: Any = None  # csud.cluster.live.PeerLive when this node serves live viewing
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/v1/segments", self._segments)
        app.router.add_get("/v1/segments/{id:\\d+}/fragments", self._fragments)
        app.router.add_get("/v1/segments/{id:\\d+}/file", self._file)
        app.router.add_post("/v1/holds", self._add_hold)
        app.router.add_post("/v1/holds/release", self._release_hold)
        app.router.add_post("/v1/verify-archive", self._verify_archive)
        app.router.add_get("/v1/registre", self._registre)
        app.router.add_get("/v1/holds", self._holds)
        app.router.add_get("/v1/live-up", self._live_up)
        app.router.add_get("/v1/live/{camera}", self._live_stream)
        return app

    async def _live_up(self, request: web.Request) -> web.StreamResponse:
        if self.live is None:
            return web.json_response({})  # no [web] here: nothing streams from this node
        response: web.StreamResponse = await self.live.up(request)
        return response

    async def _live_stream(self, request: web.Request) -> web.StreamResponse:
        if self.live is None:
            return web.json_response({"error": "no live viewing on this node"}, status=404)
        response: web.StreamResponse = await self.live.stream(request)
        return response

    async def _holds(self, request: web.Request) -> web.Response:
        def holds(index: Index) -> list[dict[str, Any]]:
            return [hold_dict(h) for h in index.holds()]

        rows = await asyncio.to_thread(self._query, holds)
        return web.json_response({"node": self.node, "holds": rows})

    async def start(self, host: str, port: int) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        header = request.headers.get(AUTH_HEADER, "")
        body = await request.read() if request.can_read_body else b""
        if not check(self.secret, header, request.method, request.path_qs, time.time(), body):
            return web.json_response({"error": "unauthorised"}, status=401)
        response: web.StreamResponse = await handler(request)
        return response

    def _query(self, fn: Any, *args: Any) -> Any:
        index = Index.open(self.root / INDEX_FILENAME, readonly=True)
        try:
            return fn(index, *args)
        finally:
            index.close()

    async def _segments(self, request: web.Request) -> web.Response:
        camera = request.query.get("camera", "")
        if not camera:
            return web.json_response({"error": "camera required"}, status=400)
        try:
            from_ns = int(request.query["from_ns"]) if "from_ns" in request.query else None
            to_ns = int(request.query["to_ns"]) if "to_ns" in request.query else None
        except ValueError:
            return web.json_response({"error": "from_ns/to_ns: integers"}, status=400)
        rows = await asyncio.to_thread(self._query, segment_rows, camera, from_ns, to_ns)
        return web.json_response({"node": self.node, "segments": rows})

    async def _fragments(self, request: web.Request) -> web.Response:
        segment_id = int(request.match_info["id"])
        frags = await asyncio.to_thread(self._query, lambda ix: ix.fragments(segment_id))
        return web.json_response(
            [{"start_ns": f.start_ns, "offset": f.offset, "size": f.size, "frames": f.frames} for f in frags]
        )

    async def _file(self, request: web.Request) -> web.StreamResponse:
        segment_id = int(request.match_info["id"])
        row = await asyncio.to_thread(self._query, lambda ix: ix.segment(segment_id))
        if row is None:
            return web.json_response({"error": "no such segment"}, status=404)
        path = self.root / row.path
        if not path.is_file():
            return web.json_response({"error": "segment file missing"}, status=404)
        return web.FileResponse(path)

    async def _add_hold(self, request: web.Request) -> web.Response:
        try:
            doc = await request.json()
            cameras = [str(c) for c in doc["cameras"]]
            from_ns, to_ns = int(doc["from_ns"]), int(doc["to_ns"])
            until_ns = int(doc["until_ns"]) if doc.get("until_ns") is not None else None
            fields = {k: str(doc[k]) for k in ("requisition", "officer", "reason")}
            actor = str(doc.get("actor") or "cluster")
            created_ns = int(doc.get("created_ns") or time.time_ns())
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": "malformed hold"}, status=400)

        def add() -> int:
            index = Index.open(self.root / INDEX_FILENAME)
            try:
                hold = index.add_hold(
                    cameras, from_ns, to_ns, until_ns=until_ns, now_ns=created_ns, actor=actor, **fields
                )
                return hold.id
            finally:
                index.close()

        try:
            hold_id = await asyncio.to_thread(add)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"node": self.node, "hold": hold_id})

    async def _registre(self, request: web.Request) -> web.Response:
        commune, month = request.query.get("commune", ""), request.query.get("month", "")
        if self.registre is None or not commune or not month:
            return web.json_response({"error": "commune and month required"}, status=400)
        try:
            doc = await asyncio.to_thread(self.registre, commune, month)
        except (ValueError, CsudError) as exc:  # a malformed month
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(doc)

    async def _release_hold(self, request: web.Request) -> web.Response:
        try:
            doc = await request.json()
            key = (
                str(doc["requisition"]),
                int(doc["from_ns"]),
                int(doc["to_ns"]),
                tuple(sorted(str(c) for c in doc["cameras"])),
                int(doc["created_ns"]),
            )
            reason, actor = str(doc["reason"]), str(doc.get("actor") or "cluster")
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": "malformed release"}, status=400)

        def release() -> list[int]:
            index = Index.open(self.root / INDEX_FILENAME)
            try:
                released = []
                for hold in index.holds(include_released=False):
                    ident = (
                        hold.requisition,
                        hold.from_ns,
                        hold.to_ns,
                        tuple(sorted(hold.cameras)),
                        hold.created_ns,
                    )
                    if ident == key:
                        index.release_hold(hold.id, reason=reason, now_ns=time.time_ns(), actor=actor)
                        released.append(hold.id)
                return released
            finally:
                index.close()

        released = await asyncio.to_thread(release)
        return web.json_response({"node": self.node, "released": released})

    async def _verify_archive(self, request: web.Request) -> web.Response:
        try:
            doc = await request.json()
            camera = str(doc["camera"]) if doc.get("camera") else None
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": "malformed request"}, status=400)
        report = await asyncio.to_thread(verify_and_journal, self.root, camera)
        return web.json_response({"node": self.node, **report})


def verify_and_journal(root: Path, camera: str | None) -> dict[str, Any]:
    """``verify --archive`` of this store, integrity failures journaled (as the CLI does)."""
    from csud.evidence.verify import verify_archive
    from csud.store.journal import INTEGRITY_FAILURE

    index = Index.open(root / INDEX_FILENAME, readonly=True)
    try:
        report = verify_archive(root, index, camera, None)
    finally:
        index.close()
    failures = [(row, f"hash mismatch: {why}") for row, why in report.mismatched]
    failures += [(row, "file missing") for row in report.missing]
    if failures:
        index = Index.open(root / INDEX_FILENAME)
        try:
            for row, reason in failures:
                index.append_journal(
                    INTEGRITY_FAILURE, now_ns=time.time_ns(), actor="cluster", camera=row.camera,
                    commune=row.commune, from_ns=row.start_ns, to_ns=row.end_ns, reason=reason,
                    details={"path": row.path, "recorded_sha256": row.sha256, "during": "verify --archive"},
                )  # fmt: skip
        finally:
            index.close()
    return {
        "checked": report.checked,
        "bytes": report.bytes,
        "mismatched": [{"path": row.path, "why": why} for row, why in report.mismatched],
        "missing": [row.path for row in report.missing],
        "unindexed": list(report.unindexed),
        "quarantined": report.quarantined,
    }
