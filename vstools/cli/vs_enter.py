"""vs-enter: a shell inside a guest."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from vstools.cli.common import arg_type, new_parser, not_implemented, run_command
from vstools.config.values import parse_guest_name

DESCRIPTION = """\
Open a shell inside the guest's namespaces, cgroup, capabilities and seccomp filter, on a new
pseudo-terminal; no host file descriptor reaches it."""


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("vs-enter", DESCRIPTION, mutating=False)
    parser.add_argument("name", metavar="NAME", type=arg_type(parse_guest_name, "name"))
    return parser


handle = not_implemented("entering guests")


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), handle, argv)
