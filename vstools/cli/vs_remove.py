"""vs-remove: delete a guest for good, on this host or, from the master, on a slave."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from vstools.cli.common import Context, arg_type, confirm, new_parser, run_command
from vstools.config.values import parse_guest_name, parse_host
from vstools.errors import NotFoundError, StateError, VSError
from vstools.guest.remove import plan_remove
from vstools.host.journal import operation
from vstools.plan import apply_steps
from vstools.pool.inventory import Inventory, inventory_path
from vstools.pool.locate import locate
from vstools.pool.slaves import Pool
from vstools.pool.store import store_of

GUEST = arg_type(parse_guest_name, "name")
HOST = arg_type(parse_host, "host")

DESCRIPTION = """\
Delete a guest for good: its root filesystem (directory, btrfs subvolume or LVM volume), its
configuration directory and what it left at run time, as lxc-destroy or pct destroy do.
Without --host, on this host: a running guest is refused (--force stops it first). With --host,
from the master, on that slave of slaves.conf: refused for a running guest or for the last copy
of the guest in the pool (no other slave holds it and the master's store has no copy), unless
--force. Asks for confirmation first when stdin is a terminal (not with --yes); any answer but
y/yes exits 7 and changes nothing. A removal that was killed halfway is finished by running the
same command again."""


def build_parser() -> argparse.ArgumentParser:
    """The parser of vs-remove: the guest's --name, the --host to delete it from and --force."""
    parser = new_parser("vs-remove", DESCRIPTION, mutating=True)
    parser.add_argument("--name", required=True, type=GUEST, help="the guest")
    parser.add_argument(
        "--host", type=HOST, help="master: the slave to delete it from (default: this host)"
    )
    parser.add_argument(
        "--force", action="store_true", help="even a running guest, or the last copy in the pool"
    )
    return parser


def handle(ctx: Context) -> int:
    """Run vs-remove: here, or on the slave named by --host."""
    if ctx.args.host:
        return _on_slave(ctx)
    name = ctx.args.name
    removal = plan_remove(ctx.host, name, force=ctx.args.force)
    if ctx.dry_run:
        for step in removal.steps:
            print(f"would: {step.description}", file=ctx.stderr)
        return 0
    confirm(ctx, f"Remove guest {name}, its root filesystem and its configuration, for good?")
    with operation(f"vs-remove {name}"):
        apply_steps(removal.steps)
    print(f"vs-remove: {name} removed", file=ctx.stderr)
    return 0


def _on_slave(ctx: Context) -> int:
    name, target = ctx.args.name, ctx.args.host
    pool = Pool(ctx.host)
    remote = pool.remote(target)
    found = locate(pool, name)
    if target in found.unreachable:
        raise StateError(f"{target} cannot be reached: {found.unreachable[target]}")
    if target not in found.holders:
        raise NotFoundError(f"{target} holds no guest {name}")
    others = [h for h in found.holders if h != target]
    stored = store_of(ctx.paths.state_dir).has(name)
    if not ctx.args.force:
        if target in found.running_on():
            raise StateError(f"guest {name} runs on {target}: stop it first, or --force")
        if not others and not stored:
            raise StateError(
                f"{target} holds the last copy of guest {name} in the pool (no other slave, no"
                " copy in the master's store): vs-get it first, or --force"
            )
    argv = ["vs-remove", "--name", name, "--yes", *(["--force"] if ctx.args.force else [])]
    if ctx.dry_run:
        print(f"would: on {target}: {' '.join(argv)}", file=ctx.stderr)
        return 0
    confirm(ctx, f"Remove guest {name} from {target}, for good?")
    inventory = Inventory(inventory_path(ctx.paths.state_dir))
    try:
        entry = inventory.begin("remove", name, target, None)
        with operation(f"vs-remove {name} on {target}"):
            inventory.step(entry, "remove on the slave")
            try:
                remote.run(argv, timeout_s=600)
            except VSError as exc:
                inventory.finish(entry, "failed", str(exc))
                raise
            inventory.finish(entry, "done")
        inventory.record_host(target, remote.call("guests_facts"), remote.call("host_facts"))
    finally:
        inventory.close()
    print(f"vs-remove: {name} removed from {target}", file=ctx.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of vs-remove: returns its exit status."""
    return run_command(build_parser(), handle, argv)
