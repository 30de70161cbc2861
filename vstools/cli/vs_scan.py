"""vs-scan: master: where every guest is and in what state."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from vstools.cli.common import arg_type, new_parser, not_implemented, run_command
from vstools.config.values import parse_guest_name, parse_host

GUEST = arg_type(parse_guest_name, "name")
HOST = arg_type(parse_host, "host")

DESCRIPTION = """\
Master only: ask every slave which guests it holds and refresh the inventory.
Output: host:vserver:enabled:running"""


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("vs-scan", DESCRIPTION, mutating=True)
    parser.add_argument("--name", type=GUEST, help="only this guest")
    parser.add_argument("--host", type=HOST, help="only this slave")
    return parser


handle = not_implemented("the pool (master)")


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), handle, argv)
