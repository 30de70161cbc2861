"""vs-check: validate the configuration the way ``sshd -t`` does."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from vstools.cli.common import Context, new_parser, run_command
from vstools.config.files import check_files
from vstools.errors import ExitCode, Severity
from vstools.host.hostconfig import check_tree

DESCRIPTION = """\
Validate the host's whole configuration (vs-tools.conf, networks.conf, create.conf, the
firewall.conf and monitor.conf templates, slaves.conf, backup.conf and every guest's files under
the guests' configuration directory), or only the FILEs named, each recognised by its file name.
Silent with exit status 0 when everything is valid; otherwise every problem is printed as
path:line:col: message and the exit status is 1. Warnings are printed but do not fail."""


def build_parser() -> argparse.ArgumentParser:
    """The parser of vs-check: the FILEs to check, none for the whole configuration."""
    parser = new_parser("vs-check", DESCRIPTION, mutating=False)
    parser.add_argument(
        "files",
        nargs="*",
        metavar="FILE",
        help="files to check (networks.conf, firewall.conf, guest.conf, ...)",
    )
    return parser


def handle(ctx: Context) -> int:
    """Run vs-check: every problem on stderr, or with --json ``valid`` and ``problems`` on stdout.
    Returns 1 when any problem is an error, else 0 (warnings do not fail)."""
    problems = check_files(ctx.args.files) if ctx.args.files else check_tree(ctx.env)
    errors = [p for p in problems if p.severity is Severity.ERROR]
    if ctx.json:
        ctx.emit_json({"valid": not errors, "problems": problems})
    else:
        for problem in problems:
            print(problem, file=ctx.stderr)
    return int(ExitCode.CONFIG if errors else ExitCode.OK)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of vs-check: returns its exit status."""
    return run_command(build_parser(), handle, argv)
