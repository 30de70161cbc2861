"""vs-stats: host or guest statistics."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from vstools.cli.common import add_guest_selection, new_parser, not_implemented, run_command

DESCRIPTION = """\
Statistics of the host, or of one guest with --name, as key:value lines."""


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("vs-stats", DESCRIPTION, mutating=False)
    add_guest_selection(parser, required=False, allow_all=False)
    return parser


handle = not_implemented("statistics")


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), handle, argv)
