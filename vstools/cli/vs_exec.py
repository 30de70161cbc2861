"""vs-exec: run a command inside a guest."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from vstools.cli.common import arg_type, new_parser, not_implemented, run_command
from vstools.config.values import parse_guest_name

DESCRIPTION = """\
Run CMD inside the guest's namespaces, cgroup, capabilities and seccomp filter; no host file
descriptor reaches it. Usage: vs-exec NAME -- CMD [ARGS...]"""


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("vs-exec", DESCRIPTION, mutating=False)
    parser.add_argument("name", metavar="NAME", type=arg_type(parse_guest_name, "name"))
    parser.add_argument(
        "command", nargs=argparse.REMAINDER, metavar="-- CMD", help="the command and its arguments"
    )
    return parser


handle = not_implemented("running commands in guests")


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), handle, argv)
