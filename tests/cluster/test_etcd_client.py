"""The contract csud relies on from aetcd 1.0.0 against Debian's etcd 3.4 (three members)."""

from __future__ import annotations

import asyncio

import aetcd
import pytest

from csud.cluster.etcd import Etcd, EtcdUnavailable, parse_endpoint
from tests.cluster.etcd_local import EtcdCluster, free_port


async def test_lease_put_get_create_revoke(etcd_cluster: EtcdCluster) -> None:
    etcd = Etcd(etcd_cluster.endpoints)
    try:
        lease = await etcd.grant(5)
        assert await etcd.keepalive(lease) > 0
        rev = await etcd.put("/t/members/a", "A", lease)
        created, kv = await etcd.create("/t/owners/cam1", "a", lease)
        assert created and kv is not None and kv.mod_revision > rev and kv.lease == lease
        again, existing = await etcd.create("/t/owners/cam1", "b", lease)
        assert not again and existing is not None and existing.value == "a"
        assert existing.mod_revision == kv.mod_revision  # the fencing token is stable
        keys = await etcd.get_prefix("/t/")
        assert [k.key for k in keys] == ["/t/members/a", "/t/owners/cam1"]
        assert not await etcd.delete_if("/t/owners/cam1", kv.mod_revision - 1)
        await etcd.revoke(lease)
        assert await etcd.get_prefix("/t/") == []  # keys bound to the lease vanish with it
    finally:
        await etcd.close()


async def test_watch_prefix_sees_puts_and_lease_expiry(etcd_cluster: EtcdCluster) -> None:
    host, port = parse_endpoint(etcd_cluster.endpoints[0])
    async with aetcd.Client(host=host, port=port, timeout=5) as client:
        watch = await client.watch_prefix(b"/w/")
        lease = await client.lease(1)  # not refreshed: expires
        await client.put(b"/w/x", b"1", lease=lease)
        kinds = []
        async with asyncio.timeout(10):
            async for event in watch:
                kinds.append((event.kind, event.kv.key))
                if len(kinds) == 2:
                    break
        await watch.cancel()
        assert kinds == [("PUT", b"/w/x"), ("DELETE", b"/w/x")]


async def test_failover_to_another_member(etcd_cluster: EtcdCluster) -> None:
    etcd = Etcd(etcd_cluster.endpoints)
    try:
        await etcd.put("/f/a", "1")
        etcd_cluster.kill(0)  # the member the adapter is talking to
        await etcd.put("/f/b", "2")
        assert [k.key for k in await etcd.get_prefix("/f/")] == ["/f/a", "/f/b"]
        assert etcd.endpoint != f"127.0.0.1:{etcd_cluster.members[0].client_port}"
    finally:
        await etcd.close()


async def test_no_endpoint_answers_within_the_deadline() -> None:
    etcd = Etcd([f"http://127.0.0.1:{free_port()}"], timeout_seconds=0.5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(EtcdUnavailable):
        await etcd.grant(5)
    assert loop.time() - started < 3
    await etcd.close()
