"""vs-pkg: run a guest's package manager from the host."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from vstools.cli.common import add_guest_selection, new_parser, not_implemented, run_command

DESCRIPTION = """\
Run the guest's own package manager (apt/dpkg, dnf, apk) inside the guest, opening only the
mirrors' addresses in its firewall for the duration and restoring the exact ruleset after."""


def build_parser() -> argparse.ArgumentParser:
    """The parser of vs-pkg: the guest selection and the package manager's actions."""
    parser = new_parser("vs-pkg", DESCRIPTION, mutating=True)
    add_guest_selection(parser)
    parser.add_argument("--update_sources", action="store_true", help="refresh package lists")
    parser.add_argument("--list_upgrades", action="store_true", help="list upgradable packages")
    parser.add_argument("--upgrade_all", action="store_true", help="upgrade every package")
    parser.add_argument("--upgrade", metavar="P", action="append", help="upgrade one package")
    parser.add_argument("--install", metavar="P", nargs="+", help="install packages")
    parser.add_argument("--remove", metavar="P", action="append", help="remove a package")
    parser.add_argument("--search", metavar="T", help="search packages")
    parser.add_argument("--show", metavar="P", help="describe a package")
    return parser


handle = not_implemented("host-driven package management")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of vs-pkg: returns its exit status (69: not implemented yet)."""
    return run_command(build_parser(), handle, argv)
