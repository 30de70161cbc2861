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
from vstools.config.settings import NetworkMode
from vstools.config.values import (
    parse_guest_name,
    parse_host,
    parse_hostname,
    parse_ipv4,
    parse_ipv4_list,
)
from vstools.guest.create import CreateRequest, clean_interrupted, plan_create
from vstools.host.fsutil import locked
from vstools.host.journal import log, operation
from vstools.plan import apply_steps
from vstools.pool.create import create_on
from vstools.pool.inventory import Inventory, inventory_path
from vstools.pool.slaves import Pool
from vstools.storage.base import DIR_DISK_WARNING

DESCRIPTION = """\
Build a guest from a template archive (tar, tar.gz, tar.zst, tar.xz), a debootstrap run or a
copy of another (stopped) guest. Only --name and --interface are needed when create.conf and
networks.conf are set up; the other options override their defaults (networks.conf's domain and
nameservers win over create.conf's). Refuses a name already used on this host, and an address
that another guest has, that is configured on an interface of this host, or that answers ARP on
the guest's uplink (a one-second probe with arping; skipped, with a warning that says why, when
NETWORK=none, the address is in no network or the uplink does not exist yet).
Transactional: on failure every step done is undone and nothing is left behind.
On the master, --host H creates the guest on the slave H (with H's own configuration, its
templates and defaults) once no guest of the pool has its name, address or context number;
without --context, the one H's CONTEXT_METHOD gives, or the next one free in the pool.
Output: the guest's parameters as key:value lines."""


def build_parser() -> argparse.ArgumentParser:
    """The parser of vs-create: --name and --interface, the source (--template, --debootstrap or
    --clone), the limits, the DNS options, --context and --enable."""
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
    parser.add_argument(
        "--host",
        type=arg_type(parse_host, "host"),
        help="master only: create it on this slave, unique in the whole pool",
    )
    return parser


def forwarded_argv(args: argparse.Namespace) -> list[str]:
    """The options of vs-create but --host and --context, as the slave's vs-create takes them
    (each value in the form its parser reads back to the same value)."""
    argv = ["--name", args.name, "--interface", str(args.interface)]
    for option, value in (
        ("--template", args.template),
        ("--debootstrap", args.debootstrap),
        ("--clone", args.clone),
        ("--rss", args.rss),
        ("--disk", args.disk),
        ("--tmpfs", args.tmpfs),
        ("--proc", args.proc),
        ("--cpu", args.cpu),
        ("--domain", args.domain),
    ):
        if value is not None:
            argv += [option, str(value)]
    if args.nameserver:
        argv += ["--nameserver", ",".join(str(ip) for ip in args.nameserver)]
    if args.enable:
        argv.append("--enable")
    if args.dry_run:
        argv.append("--dry-run")
    if args.json:
        argv.append("--json")
    return argv


def handle_on_slave(ctx: Context) -> int:
    """vs-create --host: the pool-wide checks on the master, then the slave's vs-create."""
    args = ctx.args
    pool = Pool(ctx.host)
    inventory = Inventory(inventory_path(ctx.paths.state_dir))
    try:
        with locked(ctx.paths.run_dir / "locks" / "pool-create.lock",
                    what=f"vs-create {args.name}", timeout_s=600.0):  # fmt: skip
            done = create_on(
                pool,
                inventory,
                args.host,
                forwarded_argv(args),
                name=args.name,
                ip=args.interface,
                context=args.context,
                say=lambda line: print(f"vs-create: {line}", file=ctx.stderr),
            )
    finally:
        inventory.close()
    ctx.stdout.write(done.stdout)
    ctx.stderr.write(done.stderr)
    return done.code


def handle(ctx: Context) -> int:
    """Run vs-create: under the host's creation lock, remove interrupted creations, plan the guest
    (every check first) and apply the steps, or print them with --dry-run; then print the guest's
    parameters."""
    args = ctx.args
    if args.host is not None:
        return handle_on_slave(ctx)
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
            for name in clean_interrupted(ctx.host):
                print(
                    f"vs-create: removed {name}: an earlier vs-create or vs-remove of it"
                    " was interrupted",
                    file=ctx.stderr,
                )
        plan = plan_create(
            ctx.host, request, probe_network=ctx.settings.network is NetworkMode.ROUTED
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
        print(f"vs-create: warning: {DIR_DISK_WARNING}", file=ctx.stderr)
    summary = plan.summary()
    emit_record(ctx, summary)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of vs-create: returns its exit status."""
    return run_command(build_parser(), handle, argv)
