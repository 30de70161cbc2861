"""vs-move: master: move a guest between slaves."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from vstools.cli.common import new_parser, not_implemented, run_command

DESCRIPTION = """\
Master only: move a guest with a first pass while it runs, then a short stop for the final
pass. Prints how long it took and how long the guest was stopped."""


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("vs-move", DESCRIPTION, mutating=True)
    parser.add_argument("--name", required=True, help="the guest")
    parser.add_argument("--dst_host", required=True, help="the destination slave")
    parser.add_argument("--src_host", help="the source slave (default: where it runs)")
    parser.add_argument(
        "--1step",
        dest="one_step",
        action="store_true",
        help="stop first and copy once (no live first pass)",
    )
    return parser


handle = not_implemented("the pool (master)")


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), handle, argv)
