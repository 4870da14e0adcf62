#!/usr/bin/env python3
"""Start a 3-member etcd on loopback ports in a temporary directory; stop it on Ctrl-C.

    python scripts/etcd_cluster.py [--dir DIR]

Prints the endpoints as a TOML ``[cluster] etcd = [...]`` line. Used by the demo and by hand;
the tests use the same class (tests/cluster/etcd_local.py).
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.cluster.etcd_local import EtcdCluster


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="work directory (default: a new temporary one)")
    args = parser.parse_args()
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="csud-etcd-"))
    cluster = EtcdCluster(workdir)
    try:
        cluster.start()
        print("etcd = [" + ", ".join(f'"{e}"' for e in cluster.endpoints) + "]", flush=True)
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        cluster.cleanup()
    return 0


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    sys.exit(main())
