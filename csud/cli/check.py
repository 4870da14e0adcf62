"""``csud check``: do the index and the disk agree? Read-only; exit 1 on any inconsistency.

Reported as inconsistencies: live rows whose file is missing, segment files without a row,
``.partial`` files left behind (when no daemon holds the store lock: with one running they are
the segments being written, listed as ``open``), rows whose file size differs, and with
``--hashes`` files whose SHA-256 differs from the row's. Files in ``quarantine/`` are counted,
not judged: startup recovery journaled each of them. Safe while the daemon runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

WithConfig = Callable[[argparse.ArgumentParser], argparse.ArgumentParser]
MAX_LISTED = 20  # per category in the text output (--json lists everything)


def register(subparsers: Any, with_config: WithConfig) -> None:
    check = with_config(
        subparsers.add_parser("check", help="index and disk agree (read-only; exit 1 on any inconsistency)")
    )
    check.add_argument("--json", action="store_true", help="machine-readable report (lists everything)")
    check.add_argument("--hashes", action="store_true", help="also re-hash every file (reads it all)")
    check.set_defaults(handler=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    from csud.config import load_config
    from csud.store.identity import open_store_index
    from csud.store.recovery import check_store

    loaded = load_config(args.config)
    root = loaded.settings.storage.root
    index = open_store_index(root, readonly=True)  # exit 2 unless root is the csud store
    try:
        report = check_store(index, root, hashes=args.hashes)
    finally:
        index.close()
    if args.json:
        json.dump(report.to_json(), sys.stdout, indent=2)
        print()
    else:
        state = "daemon running" if report.daemon_running else "no daemon running"
        print(f"{report.rows} rows, {report.files} files ({state})")
        listed: list[tuple[str, list[str]]] = [
            ("row without its file", report.missing_files),
            ("file without a row", report.orphan_files),
            ("partial file left behind (the next daemon start recovers it)", report.partial_files),
            (
                "size differs from the index",
                [f"{p} (index {a} B, file {b} B)" for p, a, b in report.size_mismatches],
            ),
            ("SHA-256 differs from the index", report.hash_mismatches),
        ]
        for what, paths in listed:
            for p in paths[:MAX_LISTED]:
                print(f"{what}: {p}")
            if len(paths) > MAX_LISTED:
                print(f"{what}: ... and {len(paths) - MAX_LISTED} more")
        if report.open_partials:
            print(f"{len(report.open_partials)} segment(s) being written")
        if args.hashes:
            print(f"{report.hashed} file(s) re-hashed")
        if report.quarantined:
            print(f"{report.quarantined} file(s) in quarantine/ (see csud journal)")
        print("consistent" if report.consistent else "INCONSISTENT")
    return 0 if report.consistent else 1
