"""vs-net: show or change a guest's uplink, routes and firewall."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from vstools.cli.common import add_guest_selection, new_parser, not_implemented, run_command

DESCRIPTION = """\
Show or change the three network layers of guests: vlan (uplink interface), route (policy
rule, table, host route, proxy ARP) and fw (the guest's IN and OUT chains).
Output: host:vserver:ip:vlan:route:fwIN:fwOUT"""


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("vs-net", DESCRIPTION, mutating=True)
    add_guest_selection(parser)
    for layer in ("vlan", "route", "fw"):
        parser.add_argument(
            f"--{layer}", choices=("up", "down"), help=f"bring the {layer} layer up or down"
        )
    parser.add_argument(
        "--plan",
        action="store_true",
        help="print the compiled firewall and its diff with what is loaded",
    )
    return parser


handle = not_implemented("guest networking")


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), handle, argv)
