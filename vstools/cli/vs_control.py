"""vs-control: start, stop, enable, disable, freeze and thaw guests."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from vstools.cli.common import add_guest_selection, new_parser, not_implemented, run_command

DESCRIPTION = """\
Show or change the state of guests. Output: host:vserver:enabled|disabled:running|stopped"""


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("vs-control", DESCRIPTION, mutating=True)
    add_guest_selection(parser)
    for flag, text in (
        ("start", "start the guest"),
        ("stop", "stop the guest"),
        ("restart", "stop then start"),
        ("enable", "start with the host"),
        ("disable", "do not start with the host"),
        ("freeze", "suspend every process (cgroup freezer)"),
        ("thaw", "resume a frozen guest"),
    ):
        parser.add_argument(f"--{flag}", action="store_true", help=text)
    return parser


handle = not_implemented("guest lifecycle")


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), handle, argv)
