"""vs-limit: show or change a guest's limits, hot."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from vstools.cli.common import (
    add_guest_selection,
    arg_type,
    new_parser,
    not_implemented,
    run_command,
)
from vstools.config.create import count, mb
from vstools.config.values import parse_cpu_ratio

DESCRIPTION = """\
Show or change limits, hot on a running guest and persisted in guest.conf.
Output: host:vserver:rss:disk:tmpfs:proc:cpu, each used/limit."""


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("vs-limit", DESCRIPTION, mutating=True)
    add_guest_selection(parser)
    parser.add_argument("--rss", metavar="MB", type=arg_type(mb), help="memory limit")
    parser.add_argument("--disk", metavar="MB", type=arg_type(mb), help="disk limit")
    parser.add_argument("--tmpfs", metavar="MB", type=arg_type(mb), help="size of /tmp")
    parser.add_argument("--proc", metavar="N", type=arg_type(count), help="process limit")
    parser.add_argument(
        "--cpu",
        metavar="A/B",
        type=arg_type(parse_cpu_ratio),
        help="share of the host's whole CPU capacity",
    )
    return parser


handle = not_implemented("limits")


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), handle, argv)
