"""A real 3-member etcd (Debian ``etcd-server``) for the cluster tests: missing etcd skips on a
developer machine and FAILS under CI (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.etcd_local import ETCD_BINARY, EtcdCluster
from tests.conftest import skip_or_fail


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    if not Path(ETCD_BINARY).exists():
        skip_or_fail(f"{ETCD_BINARY} missing: apt-get install etcd-server")
    cluster = EtcdCluster(tmp_path / "etcd")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.cleanup()
