"""vs-put: master: copy a guest from the master's store to a slave."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from vstools.backup.borg import check_archive
from vstools.backup.master import latest_archive
from vstools.backup.repository import Repository
from vstools.backup.restore import restore_to_store
from vstools.cli.common import Context, arg_type, new_parser, progress_line, run_command
from vstools.config.values import parse_guest_name, parse_host
from vstools.errors import StateError, UsageError
from vstools.host.journal import operation
from vstools.pool.inventory import Inventory, inventory_path
from vstools.pool.locate import locate
from vstools.pool.ops import put_guest, stored_conf
from vstools.pool.slaves import Pool
from vstools.pool.store import Store, store_of

GUEST = arg_type(parse_guest_name, "name")
HOST = arg_type(parse_host, "host")

DESCRIPTION = """\
Master only: copy a guest from the master's store to a slave (--host, or the selectable slave
with the most free memory and disk that can hold it: placement prints why). Refused before
anything is sent when the slave has the guest, its address or its context already, lacks its
network, room, extended attributes or ACLs. The slave receives it aside; it is verified
against the store (checksums), then put in place, stopped. Killed at any step, the same
command resumes it. --from-backup first restores the guest's archive (its newest, or ARCHIVE)
from the backup repository into the store (refused when the guest exists in the pool, unless
--force, which removes it there once the archive is restored).
Output: one summary line."""


def build_parser() -> argparse.ArgumentParser:
    """The parser of vs-put: the guest's --name and the destination slave (--host)."""
    parser = new_parser("vs-put", DESCRIPTION, mutating=True)
    parser.add_argument("--name", required=True, type=GUEST, help="the guest")
    parser.add_argument(
        "--host", type=HOST, help="the destination slave (default: placement chooses)"
    )
    parser.add_argument("--from-backup", nargs="?", const="", type=_archive, metavar="ARCHIVE",
                        help="restore the guest from its newest archive (or ARCHIVE) of the"
                        " backup repository, through the store")  # fmt: skip
    parser.add_argument("--force", action="store_true",
                        help="with --from-backup: replace the guest where it is now")  # fmt: skip
    return parser


def _archive(text: str) -> str:
    try:
        return check_archive(text) if text else ""
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _from_backup(ctx: Context, pool: Pool, store: Store) -> None:
    """Put the archive in the store as the guest's copy, refused (before anything is changed)
    when the guest exists in the pool, unless --force, which removes it there once the archive
    is in the store."""
    name = ctx.args.name
    repository = Repository.of(ctx.host)
    repository.require()
    archive = latest_archive(repository, name, ctx.args.from_backup or None)
    holders = locate(pool, name).holders
    if holders and not ctx.args.force:
        raise StateError(f"guest {name} exists on {', '.join(sorted(holders))}: restoring"
                         " would replace it; --force to do so")  # fmt: skip
    if ctx.dry_run:
        print(f"would: restore {archive} into the store, then put it on"
              f" {ctx.args.host or 'a slave'}", file=ctx.stderr)  # fmt: skip
        return
    with operation(f"vs-put {name} --from-backup {archive}"):
        restore_to_store(repository, store, name, archive)
        print(f"vs-put: {name}: {archive} restored into the store", file=ctx.stderr)
        for holder in sorted(holders):
            pool.remote(holder).run(["vs-remove", "--name", name, "--yes", "--force"])
            print(f"vs-put: {name}: removed from {holder} (--force)", file=ctx.stderr)


def handle(ctx: Context) -> int:
    """Run vs-put: copy the stored guest to a slave and print a summary line."""
    name = ctx.args.name
    store = store_of(ctx.paths.state_dir)
    if ctx.args.force and ctx.args.from_backup is None:
        raise UsageError("--force is only for --from-backup")
    if ctx.args.from_backup is not None:
        _from_backup(ctx, Pool(ctx.host), store)
        if ctx.dry_run:
            return 0
    if ctx.dry_run:
        stored_conf(store, name)
        print(f"would: copy {name} from {store.copy(name)} to {ctx.args.host or 'a slave'}",
              file=ctx.stderr)  # fmt: skip
        return 0
    pool = Pool(ctx.host)
    inventory = Inventory(inventory_path(ctx.paths.state_dir))
    try:
        with operation(f"vs-put {name}"):
            report = put_guest(
                pool,
                inventory,
                store,
                name,
                host=ctx.args.host,
                env=dict(ctx.env),
                progress=progress_line(ctx),
                say=lambda line: print(f"vs-put: {line}", file=ctx.stderr),
            )
        remote = pool.remote(report.host)
        inventory.record_host(report.host, remote.call("guests_facts"), remote.call("host_facts"))
    finally:
        inventory.close()
    fields = {
        "host": report.host,
        "vserver": name,
        "mb": round(report.bytes / (1 << 20), 1),
        "seconds": round(report.seconds, 2),
        "resumed": report.resumed or "",
    }
    for note in report.notes:
        print(f"vs-put: {name}: {note}", file=ctx.stderr)
    if ctx.json:
        ctx.emit_json(fields)
    else:
        ctx.emit_lines([":".join(str(v) for v in fields.values())])
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of vs-put: returns its exit status."""
    return run_command(build_parser(), handle, argv)
