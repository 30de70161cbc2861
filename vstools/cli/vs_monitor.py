"""vs-monitor: the monitor daemon."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from vstools.cli.common import add_guest_selection, new_parser, not_implemented, run_command

DESCRIPTION = """\
Watch guests (all by default) and mail MONITOR_MAILTO when a threshold is crossed, a limit is
hit, the load or the listening sockets change, or a guest stops. Runs under systemd."""


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("vs-monitor", DESCRIPTION, mutating=True)
    add_guest_selection(parser, required=False)
    parser.add_argument("--once", action="store_true", help="check once and exit")
    return parser


handle = not_implemented("the monitor")


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), handle, argv)
