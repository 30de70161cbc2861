"""vs-get: master: copy a guest from a slave to the master's store."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from vstools.cli.common import arg_type, new_parser, not_implemented, run_command
from vstools.config.values import parse_guest_name, parse_host

GUEST = arg_type(parse_guest_name, "name")
HOST = arg_type(parse_host, "host")

DESCRIPTION = """\
Master only: copy a guest from the slave that holds it into the master's store."""


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("vs-get", DESCRIPTION, mutating=True)
    parser.add_argument("--name", required=True, type=GUEST, help="the guest")
    parser.add_argument("--host", type=HOST, help="the slave to copy from (default: where it runs)")
    return parser


handle = not_implemented("the pool (master)")


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), handle, argv)
