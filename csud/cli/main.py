"""The ``csud`` command line: the parser and the entry point.

Exit codes (a contract): 0 success, 1 failure (e.g. a verification mismatch), 2 bad usage or an
invalid configuration, always with a one-line reason on stderr. Times are ISO 8601 with an
offset; naive times are refused; printed times carry the site's zone. Shared helpers live in
:mod:`csud.cli.common`; the command modules never import this one.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from csud import __version__
from csud.cli.common import EXIT_FAILURE, EXIT_USAGE, format_time, parse_time, with_config
from csud.errors import ConfigError, CsudError, UsageError

__all__ = ["COMMAND_MODULES", "build_parser", "format_time", "main", "parse_time"]

# Each of these modules defines ``register(subparsers, with_config)``, which adds its
# subcommands and sets ``handler`` (a function of the parsed arguments returning the exit code).
COMMAND_MODULES: tuple[str, ...] = (
    "csud.cli.service",
    "csud.cli.segments",
    "csud.cli.check",
    "csud.cli.cluster",
    "csud.cli.evidence",
    "csud.cli.init",
    "csud.cli.operator",
    "csud.cli.retention",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line on stderr, exit 2
        self.exit(EXIT_USAGE, f"{self.prog}: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="csud",
        description="Recording daemon of an Urban Supervision Centre.",
        epilog="Exit codes: 0 success, 1 failure, 2 bad usage or invalid configuration "
        "(one line on stderr). `csud COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"csud {__version__}")
    sub = parser.add_subparsers(
        dest="command", required=True, parser_class=_Parser, title="commands", metavar="COMMAND"
    )
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(sub, with_config)
    sub.add_parser(
        "simulate", help="serve simulated cameras on 127.0.0.1 (see csud simulate --help)", add_help=False
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "simulate":
        from csud.sim.cli import main as simulate_main

        return simulate_main(args_list[1:])
    parser = build_parser()
    if not args_list:  # plain `csud`: what there is to run
        parser.print_help()
        print("csud: give a COMMAND", file=sys.stderr)
        return EXIT_USAGE
    args = parser.parse_args(args_list)
    stdout = sys.stdout
    sys.stdout = _ReaderMayLeave(stdout)
    try:
        code = int(args.handler(args))
        sys.stdout.flush()
        return code
    except (ConfigError, UsageError) as exc:
        print(f"csud {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CsudError as exc:
        print(f"csud {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE
    finally:
        sys.stdout = stdout


class _ReaderMayLeave:
    """stdout for `csud verify PV | head -1`: once the reader has gone (EPIPE), the rest is
    discarded (stdout pointed at /dev/null, so nothing fails again at exit) and the command runs
    to its end: no traceback, and the exit code stays the command's verdict (a failed
    verification is still 1, never 0 because the pipe closed early)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._gone = False

    def write(self, text: str) -> int:
        if not self._gone:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._reader_gone()
        return len(text)

    def flush(self) -> None:
        if not self._gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._reader_gone()

    def _reader_gone(self) -> None:
        self._gone = True
        with contextlib.suppress(OSError, ValueError):  # not a real file (tests' capture)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
