"""The one adapter over aetcd (the asyncio etcd v3 client), with failover across endpoints.

aetcd 1.0.0 talks gRPC to one ``host:port``; a cluster has several members, so this adapter keeps
one client at a time and, when a call fails (member down, timeout), closes it and retries the
call once on the next endpoint. Every call has a deadline (``timeout_seconds``): a node cut off
from etcd learns it within that time, never hangs on a dead socket.

Only what csud needs: leases (grant, keep-alive, revoke), put bound to a lease, create-if-absent
(a transaction on ``create_revision == 0``), delete-if-unchanged, get by prefix. Keys and values
are ``str``; values are JSON written by the callers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aetcd
import aetcd.exceptions

from csud.errors import CsudError

T = TypeVar("T")
DEFAULT_TIMEOUT_SECONDS = 2.0


class EtcdUnavailable(CsudError):
    """No etcd endpoint answered within the deadline."""


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: str
    mod_revision: int
    lease: int


def parse_endpoint(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "//" in url else f"http://{url}")
    if not parts.hostname:
        raise ValueError(f"etcd endpoint {url!r}: no host")
    return parts.hostname, parts.port or 2379


class Etcd:
    def __init__(self, endpoints: list[str], timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoint")
        self.endpoints = [parse_endpoint(e) for e in endpoints]
        self.timeout_seconds = timeout_seconds
        self._current = 0
        self._client: aetcd.Client | None = None

    @property
    def endpoint(self) -> str:
        host, port = self.endpoints[self._current]
        return f"{host}:{port}"

    async def _client_now(self) -> aetcd.Client:
        if self._client is None:
            host, port = self.endpoints[self._current]
            client = aetcd.Client(host=host, port=port, timeout=self.timeout_seconds)
            await asyncio.wait_for(client.connect(), self.timeout_seconds)
            self._client = client
        return self._client

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        self._current = (self._current + 1) % len(self.endpoints)
        if client is not None:
            with contextlib.suppress(Exception):  # a broken channel may fail to close: dropped anyway
                await asyncio.wait_for(client.close(), 1.0)

    async def _call(self, what: str, fn: Callable[[aetcd.Client], Awaitable[T]]) -> T:
        """``fn`` on the current endpoint; on failure, once more on each other endpoint."""
        last: BaseException | None = None
        for _ in range(len(self.endpoints)):
            try:
                client = await self._client_now()
                return await asyncio.wait_for(fn(client), self.timeout_seconds)
            except (aetcd.exceptions.ClientError, TimeoutError, OSError) as exc:
                last = exc
                await self._drop_client()
        raise EtcdUnavailable(f"etcd {what}: no endpoint answered ({type(last).__name__}: {last})")

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):  # closing at shutdown: nothing more to do
                await asyncio.wait_for(client.close(), 1.0)

    # -- leases --------------------------------------------------------------------------------

    async def grant(self, ttl_seconds: int) -> int:
        lease = await self._call("lease grant", lambda c: c.lease(ttl_seconds))
        return int(lease.id)

    async def keepalive(self, lease_id: int) -> int:
        """Refresh the lease; its new TTL in seconds, 0 or less when it has expired."""
        reply = await self._call("lease keep-alive", lambda c: c.refresh_lease(lease_id))
        return int(reply.TTL) if reply is not None else 0

    async def revoke(self, lease_id: int) -> None:
        await self._call("lease revoke", lambda c: c.revoke_lease(lease_id))

    # -- keys ----------------------------------------------------------------------------------

    async def put(self, key: str, value: str, lease: int = 0) -> int:
        """Write; the revision of the write (the key's new mod revision)."""
        result = await self._call("put", lambda c: c.put(key.encode(), value.encode(), lease=lease))
        return int(result.header.revision)

    async def create(self, key: str, value: str, lease: int) -> tuple[bool, KeyValue | None]:
        """Create ``key`` unless it exists. ``(True, new)`` or ``(False, existing)``."""

        async def txn(c: aetcd.Client) -> tuple[bool, list[Any]]:
            tx = c.transactions
            status, responses = await c.transaction(
                compare=[tx.create(key.encode()) == 0],
                success=[tx.put(key.encode(), value.encode(), lease), tx.get(key.encode())],
                failure=[tx.get(key.encode())],
            )
            return bool(status), responses

        created, responses = await self._call("create", txn)
        ranges = [r for r in responses if isinstance(r, list)]
        kvs = ranges[-1] if ranges else []
        if not kvs:
            return created, None
        value_bytes, meta = kvs[0]
        return created, KeyValue(key, value_bytes.decode(), int(meta.mod_revision), int(meta.lease))

    async def delete_if(self, key: str, mod_revision: int) -> bool:
        """Delete ``key`` only if it is still the one written at ``mod_revision``."""

        async def txn(c: aetcd.Client) -> bool:
            tx = c.transactions
            status, _ = await c.transaction(
                compare=[tx.mod(key.encode()) == mod_revision], success=[tx.delete(key.encode())], failure=[]
            )
            return bool(status)

        return await self._call("delete", txn)

    async def delete(self, key: str) -> None:
        await self._call("delete", lambda c: c.delete(key.encode()))

    async def get_prefix(self, prefix: str) -> list[KeyValue]:
        result = await self._call("get", lambda c: c.get_prefix(prefix.encode()))
        return [
            KeyValue(kv.key.decode(), kv.value.decode(), int(kv.mod_revision), int(kv.lease)) for kv in result
        ]
