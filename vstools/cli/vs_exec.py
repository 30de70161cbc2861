"""vs-exec: run a command inside a guest."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from vstools.cli.common import Context, arg_type, new_parser, run_command
from vstools.config.values import parse_guest_name
from vstools.errors import UsageError
from vstools.runtime.enter import run_in_guest

DESCRIPTION = """\
Run CMD inside the guest's namespaces and cgroup, with the guest's capability set and seccomp
filter; no file descriptor of the host reaches it. With a terminal on stdin (or -t) the command
gets a new pseudo-terminal of the guest; otherwise fresh pipes carry its stdin, stdout and
stderr. The exit status is the command's (128+N when killed by signal N).
Usage: vs-exec NAME -- CMD [ARGS...]"""


def build_parser() -> argparse.ArgumentParser:
    """The parser of vs-exec: the guest's NAME, -t or -T, and the command after ``--``."""
    parser = new_parser("vs-exec", DESCRIPTION, mutating=False)
    parser.add_argument("name", metavar="NAME", type=arg_type(parse_guest_name, "name"))
    terminal = parser.add_mutually_exclusive_group()
    terminal.add_argument("-t", "--tty", action="store_true", help="always use a pseudo-terminal")
    terminal.add_argument(
        "-T", "--no-tty", action="store_true", help="never use a pseudo-terminal (pipes)"
    )
    parser.add_argument(
        "command", nargs=argparse.REMAINDER, metavar="-- CMD", help="the command and its arguments"
    )
    return parser


def handle(ctx: Context) -> int:
    """Run vs-exec: the command in the guest, on a pseudo-terminal when stdin is one (or -t, never
    with -T); returns the command's status. UsageError when no command is named."""
    argv = list(ctx.args.command)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        raise UsageError("name the command to run: vs-exec NAME -- CMD [ARGS...]")
    use_tty = ctx.args.tty or (not ctx.args.no_tty and os.isatty(0))
    return run_in_guest(ctx.paths, ctx.args.name, argv, use_tty=use_tty)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of vs-exec: returns its exit status (the command's)."""
    return run_command(build_parser(), handle, argv)
