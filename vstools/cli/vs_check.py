"""vs-check: validate the configuration the way ``sshd -t`` does."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from vstools.cli.common import Context, new_parser, run_command
from vstools.config.lexer import WHOLE_FILE
from vstools.errors import ConfigError, ExitCode, NotFoundError, Problem, Severity

DESCRIPTION = """\
Validate the host's whole configuration (vs-tools.conf, networks.conf, create.conf, the
firewall.conf and monitor.conf templates, slaves.conf, backup.conf and every guest's files under
the guests' configuration directory), or only the FILEs named, each recognised by its file name.
Silent with exit status 0 when everything is valid; otherwise every problem is printed as
path:line:col: message and the exit status is 1. Warnings are printed but do not fail."""


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("vs-check", DESCRIPTION, mutating=False)
    parser.add_argument(
        "files",
        nargs="*",
        metavar="FILE",
        help="files to check (networks.conf, firewall.conf, guest.conf, ...)",
    )
    return parser


def check_files(files: Sequence[str]) -> list[Problem]:
    from vstools.config.files import parse_file, warnings_of

    problems: list[Problem] = []
    for path in files:
        try:
            problems.extend(warnings_of(parse_file(path)))
        except ConfigError as exc:
            problems.extend(exc.problems)
        except NotFoundError as exc:
            problems.append(
                Problem(path, WHOLE_FILE, WHOLE_FILE, str(exc).removeprefix(f"{path}: "))
            )
    return problems


def handle(ctx: Context) -> int:
    if ctx.args.files:
        problems = check_files(ctx.args.files)
    else:
        from vstools.hostconfig import check_tree

        problems = check_tree(ctx.env)
    errors = [p for p in problems if p.severity is Severity.ERROR]
    if ctx.json:
        ctx.emit_json({"valid": not errors, "problems": problems})
    else:
        for problem in problems:
            print(problem, file=ctx.stderr)
    return int(ExitCode.CONFIG if errors else ExitCode.OK)


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), handle, argv)
