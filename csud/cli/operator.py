"""``csud operator add|list|passwd|disable``: live-viewing accounts (CSI R252-12).

Accounts live in the index (password hashes only, :mod:`csud.store.operators`); every change is
journaled with the OS user who made it. A password comes from ``--password-file`` (its first
line), else is asked twice on the terminal, else read as one line from standard input.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from csud.errors import UsageError

WithConfig = Callable[[argparse.ArgumentParser], argparse.ArgumentParser]


def register(subparsers: Any, with_config: WithConfig) -> None:
    op = subparsers.add_parser("operator", help="live-viewing operator accounts")
    sub = op.add_subparsers(dest="operator_command", required=True, parser_class=type(op))
    add = with_config(sub.add_parser("add", help="create an operator account"))
    add.add_argument("id", help="account id: lower-case letters, digits, dot, dash, underscore")
    add.add_argument("--name", required=True, help="the person's full name")
    add.add_argument("--communes", required=True, help="comma-separated commune ids they may watch")
    add.add_argument(
        "--password-file",
        type=Path,
        help="file whose first line is the password (default: ask on the terminal)",
    )
    add.set_defaults(handler=cmd_add)
    ls = with_config(sub.add_parser("list", help="list operator accounts"))
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(handler=cmd_list)
    pw = with_config(sub.add_parser("passwd", help="set an operator's password (ends their sessions)"))
    pw.add_argument("id", help="account id")
    pw.add_argument(
        "--password-file", type=Path, help="file whose first line is the new password (default: ask)"
    )
    pw.set_defaults(handler=cmd_passwd)
    dis = with_config(
        sub.add_parser("disable", help="disable an account (its streams close within a second)")
    )
    dis.add_argument("id", help="account id")
    dis.set_defaults(handler=cmd_disable)


def _open(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    from csud.cli.common import open_index
    from csud.config import load_config
    from csud.store.operators import Operators

    settings = load_config(args.config).settings
    # Exit 2 unless the root is the csud store; never creates it (csud init does).
    index = open_index(settings, readonly=False)
    return settings, index, Operators(index)


def _password(args: argparse.Namespace) -> str:
    from csud.store.operators import validate_password

    if args.password_file is not None:
        try:
            text = args.password_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--password-file: cannot read {args.password_file}: {exc.strerror}") from None
        return validate_password(text.splitlines()[0] if text else "")
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            raise UsageError("the two passwords differ")
        return validate_password(first)
    return validate_password(sys.stdin.readline().rstrip("\r\n"))


def cmd_add(args: argparse.Namespace) -> int:
    from csud.store.journal import os_actor
    from csud.store.operators import hash_password, validate_id

    validate_id(args.id)
    communes = [c.strip() for c in args.communes.split(",") if c.strip()]
    if not communes:
        raise UsageError("--communes: at least one commune")
    if not args.name.strip():
        raise UsageError("--name: the operator's name is required")
    password = _password(args)
    settings, index, operators = _open(args)
    try:
        known = {c.id: c for c in settings.communes}
        for commune in communes:
            if commune not in known:
                raise UsageError(f"--communes: unknown commune {commune!r}")
            if known[commune].service != "live":
                print(f"note: commune {commune} is storage-only: nothing of it is streamed", file=sys.stderr)
        op = operators.add(
            args.id,
            args.name.strip(),
            communes,
            hash_password(password),
            now_ns=time.time_ns(),
            actor=os_actor(),
        )
    finally:
        index.close()
    print(f"operator {op.id} ({op.name}) added: communes {','.join(op.communes)}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    _, index, operators = _open(args)
    try:
        rows = operators.all()
    finally:
        index.close()
    if args.json:
        json.dump([op.to_json() for op in rows], sys.stdout, indent=2)
        print()
        return 0
    for op in rows:
        state = "enabled" if op.enabled else "DISABLED"
        print(f"{op.id:20s} {state:8s} {','.join(op.communes):30s} {op.name}")
    if not rows:
        print("(no operators)")
    return 0


def cmd_passwd(args: argparse.Namespace) -> int:
    from csud.store.journal import os_actor
    from csud.store.operators import hash_password

    password = _password(args)
    _, index, operators = _open(args)
    try:
        operators.set_password(args.id, hash_password(password), now_ns=time.time_ns(), actor=os_actor())
    finally:
        index.close()
    print(f"operator {args.id}: password changed; their open sessions are ended")
    return 0


def cmd_disable(args: argparse.Namespace) -> int:
    from csud.store.journal import os_actor

    _, index, operators = _open(args)
    try:
        operators.disable(args.id, now_ns=time.time_ns(), actor=os_actor())
    finally:
        index.close()
    print(f"operator {args.id} disabled; their live streams close within a second")
    return 0
