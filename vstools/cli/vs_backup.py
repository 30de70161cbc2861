"""vs-backup: master: back up the guests of backup.conf."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from vstools.cli.common import arg_type, new_parser, not_implemented, run_command
from vstools.config.values import parse_guest_name, parse_host

GUEST = arg_type(parse_guest_name, "name")
HOST = arg_type(parse_host, "host")

DESCRIPTION = """\
Master only: back up the guests listed in backup.conf (hot: from a snapshot; cold: stop,
copy, start), as versioned generations."""


def build_parser() -> argparse.ArgumentParser:
    """The parser of vs-backup: --host and --name narrow the guests of backup.conf."""
    parser = new_parser("vs-backup", DESCRIPTION, mutating=True)
    parser.add_argument("--host", type=HOST, help="only the guests on this slave")
    parser.add_argument("--name", type=GUEST, help="only this guest")
    return parser


handle = not_implemented("backups (master)")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of vs-backup: returns its exit status (69: not implemented yet)."""
    return run_command(build_parser(), handle, argv)
