"""``[cluster]`` (csud.config.ClusterConfig) and the etcd key layout read by csud.cluster.node."""

from __future__ import annotations

from pathlib import Path

import pytest

from csud.cluster.etcd import KeyValue, parse_endpoint
from csud.cluster.node import parse_view, status_document
from csud.config import parse_settings
from csud.errors import ConfigError

BASE = {"etcd": ["http://127.0.0.1:2379"], "node": "rec-1"}


def test_absent_cluster_is_one_node() -> None:
    assert parse_settings({}).cluster is None


def test_defaults_and_validation(tmp_path: Path) -> None:
    cluster = parse_settings({"cluster": BASE}).cluster
    assert cluster is not None and cluster.lease_seconds == 10 and cluster.capacity == 300
    with pytest.raises(ConfigError, match=r"cluster\.node"):
        parse_settings({"cluster": {**BASE, "node": "../etc"}})
    with pytest.raises(ConfigError, match=r"cluster\.etcd"):
        parse_settings({"cluster": {**BASE, "etcd": []}})
    with pytest.raises(ConfigError, match=r"cluster\.lease_seconds"):
        parse_settings({"cluster": {**BASE, "lease_seconds": 1}})
    with pytest.raises(ConfigError, match=r"cluster\.listen"):
        parse_settings({"cluster": {**BASE, "listen": "nowhere"}})


def test_secret_file_must_be_readable_and_long_enough(tmp_path: Path) -> None:
    short = tmp_path / "short.key"
    short.write_text("tiny\n")
    cluster = parse_settings({"cluster": {**BASE, "secret_file": str(short)}}).cluster
    assert cluster is not None
    with pytest.raises(ConfigError, match="under 16 bytes"):
        cluster.read_secret()
    good = tmp_path / "good.key"
    good.write_text("x" * 32 + "\n")
    cluster = parse_settings({"cluster": {**BASE, "secret_file": str(good)}}).cluster
    assert cluster is not None and cluster.read_secret() == b"x" * 32
    missing = parse_settings({"cluster": {**BASE, "secret_file": str(tmp_path / "none")}}).cluster
    assert missing is not None
    with pytest.raises(ConfigError, match="cannot read"):
        missing.read_secret()


def test_endpoints() -> None:
    assert parse_endpoint("http://10.0.0.1:2379") == ("10.0.0.1", 2379)
    assert parse_endpoint("10.0.0.2:12379") == ("10.0.0.2", 12379)
    assert parse_endpoint("http://etcd-a") == ("etcd-a", 2379)


def test_view_and_status_document() -> None:
    kvs = [
        KeyValue("/csud/members/rec-1", '{"advertise": "http://a:9120", "capacity": 2}', 3, 7),
        KeyValue("/csud/members/rec-2", '{"advertise": "http://b:9120", "capacity": 5}', 4, 8),
        KeyValue("/csud/members/broken", "not json", 5, 9),
        KeyValue("/csud/owners/cam1", "rec-1", 10, 7),
        KeyValue("/csud/owners/cam2", "rec-2", 11, 8),
        KeyValue("/csud/ready/cam3/rec-2", "ready", 12, 8),
        KeyValue("/csud/ready/cam1/rec-2", "starting", 13, 8),
        KeyValue("/csud/nodes/rec-0", "http://old:9120", 1, 0),
    ]
    view = parse_view(kvs)
    assert sorted(view.members) == ["rec-1", "rec-2"]
    assert view.ready == {"cam3": {"rec-2"}}  # a claim still "starting" is not ready
    assert view.known == {"rec-0": "http://old:9120"}
    doc = status_document(view, ["cam1", "cam2", "cam3"])
    assert doc == {
        "members": [
            {"node": "rec-1", "advertise": "http://a:9120", "cameras": 1, "capacity": 2},
            {"node": "rec-2", "advertise": "http://b:9120", "cameras": 1, "capacity": 5},
        ],
        "cameras": {"cam1": "rec-1", "cam2": "rec-2", "cam3": None},
    }
