"""vs-move: master: move a guest between slaves."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from vstools.cli.common import arg_type, new_parser, not_implemented, run_command
from vstools.config.values import parse_guest_name, parse_host

GUEST = arg_type(parse_guest_name, "name")
HOST = arg_type(parse_host, "host")

DESCRIPTION = """\
Master only: move a guest with a first pass while it runs, then a short stop for the final
pass. Prints how long it took and how long the guest was stopped."""


def build_parser() -> argparse.ArgumentParser:
    """The parser of vs-move: the guest's --name, --dst_host, --src_host and --1step."""
    parser = new_parser("vs-move", DESCRIPTION, mutating=True)
    parser.add_argument("--name", required=True, type=GUEST, help="the guest")
    parser.add_argument("--dst_host", type=HOST, required=True, help="the destination slave")
    parser.add_argument("--src_host", type=HOST, help="the source slave (default: where it runs)")
    parser.add_argument(
        "--1step",
        dest="one_step",
        action="store_true",
        help="stop first and copy once (no live first pass)",
    )
    return parser


handle = not_implemented("the pool (master)")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of vs-move: returns its exit status (69: not implemented yet)."""
    return run_command(build_parser(), handle, argv)
