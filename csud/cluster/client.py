"""Client of the node API (csud.cluster.api): signed requests to another node, bounded in time."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import aiohttp

from csud.cluster.api import AUTH_HEADER, sign
from csud.errors import CsudError

REQUEST_TIMEOUT_SECONDS = 10.0
FILE_TIMEOUT_SECONDS = 300.0
CHUNK_BYTES = 1 << 20


class NodeUnreachable(CsudError):
    def __init__(self, node: str, reason: str) -> None:
        super().__init__(f"node {node} unreachable ({reason})")
        self.node = node


class NodeClient:
    def __init__(self, node: str, advertise: str, secret: bytes, session: aiohttp.ClientSession) -> None:
        self.node = node
        self.base = advertise.rstrip("/")
        self.secret = secret
        self.session = session

    def _headers(self, method: str, path_qs: str, body: bytes = b"") -> dict[str, str]:
        return {AUTH_HEADER: sign(self.secret, method, path_qs, time.time(), body)}

    async def verify_archive(self, camera: str | None) -> dict[str, Any]:
        """That node checks its own store (the bytes stay there): its report."""
        body = json.dumps({"camera": camera}).encode()
        headers = {**self._headers("POST", "/v1/verify-archive", body), "Content-Type": "application/json"}
        try:
            async with self.session.post(
                self.base + "/v1/verify-archive",
                data=body,
                headers=headers,
                # Reading a whole store takes its time: only connecting is bounded tightly.
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=REQUEST_TIMEOUT_SECONDS),
            ) as resp:
                if resp.status != 200:
                    raise NodeUnreachable(self.node, f"HTTP {resp.status} for verify --archive")
                report: dict[str, Any] = await resp.json()
                return report
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise NodeUnreachable(self.node, type(exc).__name__) from None

    async def add_hold(self, hold: dict[str, Any]) -> int:
        """Place ``hold`` (see csud.cluster.api) on that node; its hold id there."""
        doc = await self._post("/v1/holds", hold, "the hold")
        return int(doc["hold"])

    async def release_hold(self, hold: dict[str, Any]) -> list[int]:
        """Release that node's copy of ``hold``; the ids released there."""
        doc = await self._post("/v1/holds/release", hold, "the release")
        return [int(i) for i in doc["released"]]

    async def _post(self, path: str, payload: dict[str, Any], what: str) -> dict[str, Any]:
        body = json.dumps(payload).encode()
        headers = {**self._headers("POST", path, body), "Content-Type": "application/json"}
        try:
            async with self.session.post(
                self.base + path,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS),
            ) as resp:
                if resp.status != 200:
                    raise NodeUnreachable(self.node, f"HTTP {resp.status} for {what}")
                doc: dict[str, Any] = await resp.json()
                return doc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise NodeUnreachable(self.node, type(exc).__name__) from None

    async def _json(self, path_qs: str) -> Any:
        try:
            async with self.session.get(
                self.base + path_qs,
                headers=self._headers("GET", path_qs),
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS),
            ) as resp:
                if resp.status != 200:
                    raise NodeUnreachable(self.node, f"HTTP {resp.status} for {path_qs.split('?')[0]}")
                return await resp.json()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise NodeUnreachable(self.node, type(exc).__name__) from None

    async def segments(self, camera: str, from_ns: int | None, to_ns: int | None) -> list[dict[str, Any]]:
        query = f"/v1/segments?camera={camera}"
        if from_ns is not None:
            query += f"&from_ns={from_ns}"
        if to_ns is not None:
            query += f"&to_ns={to_ns}"
        doc = await self._json(query)
        rows: list[dict[str, Any]] = doc["segments"]
        for row in rows:
            row["node"] = row.get("node") or self.node
        return rows

    async def holds(self) -> list[dict[str, Any]]:
        """That node's holds, every one (``csud.cluster.api.hold_dict``), with its ids there."""
        doc: dict[str, Any] = await self._json("/v1/holds")
        rows: list[dict[str, Any]] = doc["holds"]
        return rows

    async def registre(self, commune: str, month: str) -> dict[str, Any]:
        doc: dict[str, Any] = await self._json(f"/v1/registre?commune={commune}&month={month}")
        return doc

    async def fragments(self, segment_id: int) -> list[dict[str, Any]]:
        frags: list[dict[str, Any]] = await self._json(f"/v1/segments/{segment_id}/fragments")
        return frags

    async def download(self, segment_id: int, dest: Path) -> None:
        path_qs = f"/v1/segments/{segment_id}/file"
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            async with self.session.get(
                self.base + path_qs,
                headers=self._headers("GET", path_qs),
                timeout=aiohttp.ClientTimeout(total=FILE_TIMEOUT_SECONDS),
            ) as resp:
                if resp.status != 200:
                    raise NodeUnreachable(self.node, f"HTTP {resp.status} for segment {segment_id}")
                with dest.open("wb") as out:
                    async for chunk in resp.content.iter_chunked(CHUNK_BYTES):
                        out.write(chunk)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise NodeUnreachable(self.node, type(exc).__name__) from None
