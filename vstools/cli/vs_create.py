"""vs-create: build a guest."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from vstools.cli.common import (
    Context,
    add_limit_options,
    arg_type,
    emit_record,
    new_parser,
    run_command,
)
from vstools.config.guest import parse_context
from vstools.config.values import (
    parse_guest_name,
    parse_hostname,
    parse_ipv4,
    parse_ipv4_list,
)

DESCRIPTION = """\
Build a guest from a template archive (tar, tar.gz, tar.zst, tar.xz), a debootstrap run or a
copy of another (stopped) guest. Only --name and --interface are needed when create.conf and
networks.conf are set up; the other options override their defaults (networks.conf's domain and
nameservers win over create.conf's). Refuses a name already used on this host, and an address
that another guest has, that is configured on an interface of this host, or that answers ARP on
the guest's uplink (a one-second probe with arping; skipped, with a warning that says why, when
NETWORK=none, the address is in no network or the uplink does not exist yet).
Transactional: on failure every step done is undone and nothing is left behind.
Output: the guest's parameters as key:value lines."""


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
    add_limit_options(parser)
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


def handle(ctx: Context) -> int:
    from vstools.config.settings import NetworkMode
    from vstools.create import CreateRequest, clean_interrupted, plan_create
    from vstools.fsutil import locked
    from vstools.hostconfig import load_create, load_networks
    from vstools.journal import log, operation
    from vstools.plan import apply_steps

    args = ctx.args
    request = CreateRequest(
        name=args.name,
        ip=args.interface,
        template=args.template,
        debootstrap=args.debootstrap,
        clone=args.clone,
        disk_mb=args.disk,
        rss_mb=args.rss,
        tmpfs_mb=args.tmpfs,
        proc=args.proc,
        cpu=args.cpu,
        domain=args.domain,
        nameservers=args.nameserver or (),
        context=args.context,
        enable=args.enable,
    )
    paths = ctx.paths
    # One creation at a time per host: names, addresses and context numbers are checked and
    # taken under this lock.
    with locked(
        paths.run_dir / "locks" / "create.lock", what=f"vs-create {args.name}", timeout_s=600.0
    ):
        if not ctx.dry_run:
            for name in clean_interrupted(paths):
                print(
                    f"vs-create: removed {name}: an earlier vs-create of it was interrupted",
                    file=ctx.stderr,
                )
        plan = plan_create(
            paths,
            load_create(paths),
            load_networks(paths),
            request,
            probe_network=ctx.settings.network is NetworkMode.ROUTED,
        )
        for check in plan.checks:
            if ctx.dry_run:
                print(f"checked: {check}", file=ctx.stderr)
            else:
                log.debug("checked: %s", check)
        if ctx.dry_run:
            for step in plan.steps:
                print(f"would: {step.description}", file=ctx.stderr)
        else:
            with operation(f"vs-create {args.name}"):
                apply_steps(plan.steps)
    if args.disk is not None and plan.conf.storage == "dir":
        from vstools.cli.vs_limit import DIR_DISK_WARNING

        print(f"vs-create: warning: {DIR_DISK_WARNING}", file=ctx.stderr)
    summary = plan.summary()
    emit_record(ctx, summary)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), handle, argv)
