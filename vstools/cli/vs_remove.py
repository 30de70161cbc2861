"""vs-remove: master: delete a guest from a host."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from vstools.cli.common import arg_type, new_parser, not_implemented, run_command
from vstools.config.values import parse_guest_name, parse_host

GUEST = arg_type(parse_guest_name, "name")
HOST = arg_type(parse_host, "host")

DESCRIPTION = """\
Master only: delete a guest from a host. Refuses the last copy, or a running guest, without
--force."""


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("vs-remove", DESCRIPTION, mutating=True)
    parser.add_argument("--name", required=True, type=GUEST, help="the guest")
    parser.add_argument("--host", type=HOST, required=True, help="the host to delete it from")
    parser.add_argument(
        "--force", action="store_true", help="even the last copy or a running guest"
    )
    return parser


handle = not_implemented("the pool (master)")


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), handle, argv)
