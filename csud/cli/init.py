"""``csud init``: create the store at ``storage.root`` (docs/storage.md, "Store identity").

The only command that creates a store. Run it once when installing (scripts/install.sh does),
after mounting the disk; run again on an existing store it changes nothing and exits 0. It
refuses (exit 2) a non-empty directory that is not a csud store. A store made by a csud from
before store identities (an ``index.sqlite3`` without ``csud-store.json``) is adopted.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

WithConfig = Callable[[argparse.ArgumentParser], argparse.ArgumentParser]


def register(subparsers: Any, with_config: WithConfig) -> None:
    init = with_config(
        subparsers.add_parser("init", help="create the store at storage.root (once, after mounting the disk)")
    )
    init.add_argument("--json", action="store_true", help="print the store's identity as JSON")
    init.set_defaults(handler=cmd_init)


def cmd_init(args: argparse.Namespace) -> int:
    from csud.config import load_config
    from csud.store.identity import create_store

    root = load_config(args.config).settings.storage.root
    identity, what = create_store(root)
    if args.json:
        json.dump({"root": str(root), "result": what, **identity.to_json()}, sys.stdout, indent=2)
        print()
    elif what == "exists":
        print(f"storage root {root} is already csud store {identity.uuid}: nothing to do")
    else:
        print(f"storage root {root}: {what} csud store {identity.uuid}")
    return 0
