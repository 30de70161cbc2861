"""vs-enter: a shell inside a guest."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from vstools.cli.common import Context, arg_type, new_parser, run_command
from vstools.config.values import parse_guest_name
from vstools.runtime.enter import run_in_guest

DESCRIPTION = """\
Open a login shell inside the guest, on a new pseudo-terminal of the guest, with the guest's
namespaces, cgroup, capabilities and seccomp filter; no file descriptor of the host reaches it.
The exit status is the shell's."""


def build_parser() -> argparse.ArgumentParser:
    """The parser of vs-enter: the guest's NAME and --shell."""
    parser = new_parser("vs-enter", DESCRIPTION, mutating=False)
    parser.add_argument("name", metavar="NAME", type=arg_type(parse_guest_name, "name"))
    parser.add_argument("--shell", default="/bin/sh", help="the shell to run (default /bin/sh)")
    return parser


def handle(ctx: Context) -> int:
    """Run vs-enter: a login shell in the guest on a new pseudo-terminal; returns its status."""
    return run_in_guest(ctx.paths, ctx.args.name, [ctx.args.shell, "-l"], use_tty=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of vs-enter: returns its exit status (the shell's)."""
    return run_command(build_parser(), handle, argv)
