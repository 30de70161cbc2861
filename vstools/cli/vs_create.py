"""vs-create: build a guest."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from vstools.cli.common import arg_type, new_parser, not_implemented, run_command
from vstools.config.create import count, mb
from vstools.config.guest import parse_context
from vstools.config.values import (
    parse_cpu_ratio,
    parse_guest_name,
    parse_hostname,
    parse_ipv4,
    parse_ipv4_list,
)

DESCRIPTION = """\
Build a guest from a template archive, a debootstrap run or a clone of another guest.
Only --name and --interface are needed when create.conf and networks.conf are set up; the other
options override their defaults. Transactional: on failure nothing is left behind."""


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("vs-create", DESCRIPTION, mutating=True)
    parser.add_argument(
        "--name", required=True, type=arg_type(parse_guest_name, "name"), help="the guest's name"
    )
    parser.add_argument(
        "--interface",
        required=True,
        metavar="IP",
        type=arg_type(parse_ipv4),
        help="the guest's IPv4 address",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--template", metavar="FILE", help="a tar, tar.gz or tar.zst archive")
    source.add_argument("--debootstrap", metavar="DIST", help="a Debian suite to debootstrap")
    source.add_argument(
        "--clone",
        metavar="GUEST",
        type=arg_type(parse_guest_name, "name"),
        help="copy an existing guest",
    )
    parser.add_argument("--disk", metavar="MB", type=arg_type(mb), help="disk limit")
    parser.add_argument("--rss", metavar="MB", type=arg_type(mb), help="memory limit")
    parser.add_argument("--tmpfs", metavar="MB", type=arg_type(mb), help="size of /tmp")
    parser.add_argument("--proc", metavar="N", type=arg_type(count), help="process limit")
    parser.add_argument(
        "--cpu",
        metavar="A/B",
        type=arg_type(parse_cpu_ratio),
        help="share of the host's whole CPU capacity",
    )
    parser.add_argument("--domain", type=arg_type(parse_hostname), help="DNS domain")
    parser.add_argument(
        "--nameserver", type=arg_type(parse_ipv4_list), metavar="IP[,IP...]", help="DNS servers"
    )
    parser.add_argument(
        "--context",
        type=arg_type(parse_context, "context"),
        metavar="N",
        help="context number (default: CONTEXT_METHOD)",
    )
    parser.add_argument("--enable", action="store_true", help="start the guest with the host")
    return parser


handle = not_implemented("creating guests")


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), handle, argv)
