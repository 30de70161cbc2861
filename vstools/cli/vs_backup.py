"""vs-backup: master: back up the guests of backup.conf into the borg repository; retention,
verification, listing and single-file restore."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

from vstools.backup.alerts import backup_spool, deliver, mail_alert, mail_overdue
from vstools.backup.borg import check_archive
from vstools.backup.master import (
    Outcome,
    accept_history,
    backup_conf,
    check_usage,
    latest_archive,
    overdue,
    prune_only,
    rollback,
    run_backups,
    timestamp,
)
from vstools.backup.records import Records
from vstools.backup.repository import Repository
from vstools.backup.restore import extract_files
from vstools.backup.retention import KeepPolicy
from vstools.cli.common import Context, arg_type, confirm, new_parser, run_command
from vstools.config.values import parse_guest_name, parse_host
from vstools.errors import UsageError
from vstools.host.fsutil import locked
from vstools.host.journal import operation
from vstools.pool.inventory import Inventory, inventory_path
from vstools.pool.slaves import Pool

GUEST = arg_type(parse_guest_name, "name")
HOST = arg_type(parse_host, "host")


def _archive_arg(text: str) -> str:
    try:
        return check_archive(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


ARCHIVE = arg_type(_archive_arg, "archive")
FIELDS = ("host", "vserver", "archive", "mb", "dedup_mb", "seconds", "held")

DESCRIPTION = """\
Master only: back up the guests listed in backup.conf (or those on --host, or --name) into
the master's borg repository (BACKUP_DIR): each slave archives its guests itself, over SSH,
with a key the master restricts to an append-only borg serve. hot: from a read-only snapshot
(btrfs, lvm) or, on dir storage, with the guest frozen while it is read (the frozen time is
printed); cold: the guest is stopped, archived and started again (always, also on failure).
Numeric owners, hard links, ACLs, xattrs, sparse files and devices are kept. Retention
(BACKUP_KEEP_*) is applied to a guest only after its new archive is complete, then the
repository is compacted. --init makes the repository, --list lists archives, --check verifies,
--extract restores single files (a whole guest: vs-put --from-backup).
Output: one line per guest: host:vserver:archive:MB:deduplicated MB:seconds:frozen or stopped
time."""


def build_parser() -> argparse.ArgumentParser:
    """The parser of vs-backup."""
    parser = new_parser("vs-backup", DESCRIPTION, mutating=True)
    parser.add_argument("--host", type=HOST, help="only the guests on this slave")
    parser.add_argument("--name", type=GUEST, help="only this guest")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--init", action="store_true", help="make the repository (and passphrase)")
    what.add_argument("--list", action="store_true", help="list the archives (of --name)")
    what.add_argument("--check", action="store_true", help="verify the repository (borg check)")
    what.add_argument("--prune", action="store_true", help="apply retention only")
    what.add_argument("--extract", action="store_true", help="restore PATHs of --archive to --to")
    what.add_argument("--rollback", action="store_true",
                      help="undo what came after the master last verified it")  # fmt: skip
    what.add_argument("--accept", action="store_true",
                      help="archives removed on purpose: stop expecting them")  # fmt: skip
    what.add_argument("--overdue", action="store_true",
                      help="only mail the guests whose backup is overdue")  # fmt: skip
    parser.add_argument("--verify-data", action="store_true",
                        help="with --check: read and decrypt every chunk too")  # fmt: skip
    parser.add_argument("--archive", type=ARCHIVE, help="with --extract: the archive")
    parser.add_argument("--to", type=Path, help="with --extract: a new or empty directory")
    parser.add_argument("paths", nargs="*", metavar="PATH", help="with --extract: guest paths")
    return parser


def handle(ctx: Context) -> int:
    """Run vs-backup."""
    args = ctx.args
    if args.paths and not args.extract:
        raise UsageError("PATHs are only for --extract")
    repository = Repository.of(ctx.host)
    if args.list:
        return _list(ctx, repository)
    if args.extract:
        check_usage(name=args.name, archive=args.archive, paths=args.paths)
        if args.to is None:
            raise UsageError("--extract needs --to DIR")
        latest_archive(repository, args.name, args.archive)
        if ctx.dry_run:
            print(f"would: extract {' '.join(args.paths)} of {args.archive} into {args.to}",
                  file=ctx.stderr)  # fmt: skip
            return 0
        with _lock(ctx), operation(f"vs-backup --extract {args.archive}"):
            extract_files(repository, args.archive, args.paths, args.to)
        print(f"vs-backup: {args.archive}: {' '.join(args.paths)} restored into {args.to}",
              file=ctx.stderr)  # fmt: skip
        return 0
    if args.init:
        if ctx.dry_run:
            print(f"would: make the repository {repository.path}", file=ctx.stderr)
            return 0
        with _lock(ctx), operation("vs-backup --init"):
            made = repository.init()
        for thing in made or ["nothing: the repository exists"]:
            print(f"vs-backup: made {thing}", file=ctx.stderr)
        print(f"vs-backup: escrow the key and passphrase: borg key export {repository.path}"
              f" FILE, and keep {repository.passphrase_file}", file=ctx.stderr)  # fmt: skip
        return 0
    inventory = Inventory(inventory_path(ctx.paths.state_dir))
    try:
        records = Records(inventory)
        if args.check:
            return _check(ctx, repository, records)
        if args.overdue:
            return _overdue(ctx, records)
        if args.accept:
            repository.require()
            confirm(ctx, "accept the repository as it is now, with every missing archive gone?")
            if ctx.dry_run:
                print("would: accept the repository as it is", file=ctx.stderr)
                return 0
            with _lock(ctx), operation("vs-backup --accept"):
                for name in accept_history(repository, records):
                    print(f"vs-backup: no longer expected: {name}", file=ctx.stderr)
            return 0
        if args.rollback:
            with _lock(ctx), operation("vs-backup --rollback"):
                rollback(Pool(ctx.host), repository, records, dry_run=ctx.dry_run, say=_say(ctx))
            return 0
        pool = Pool(ctx.host)
        if args.prune:
            return _prune(ctx, pool, repository, records)
        with _lock(ctx), operation("vs-backup"):
            outcomes = run_backups(pool, repository, records, name=args.name, host=args.host,
                                   dry_run=ctx.dry_run, env=dict(ctx.env),
                                   say=lambda line: print(line, file=ctx.stderr))  # fmt: skip
            if not ctx.dry_run:
                _alerts(ctx, records, outcomes)
    finally:
        inventory.close()
    for outcome in outcomes:
        if outcome.error is not None:
            ctx.fail(outcome.name, outcome.error)
        for archive in outcome.pruned:
            print(f"vs-backup: {outcome.name}: pruned {archive}", file=ctx.stderr)
    ctx.emit_rows([o.fields() for o in outcomes], FIELDS)
    return ctx.exit_code()


def _alerts(ctx: Context, records: Records, outcomes: list[Outcome]) -> None:
    """Mail each failure, then every guest now overdue; try to deliver them at once."""
    spool = backup_spool(ctx.host)
    for outcome in outcomes:
        if outcome.error is not None:
            body = f"The backup of guest {outcome.name} failed:\n{outcome.error}\n"
            mail_alert(ctx.host, spool, outcome.host or "unknown", outcome.name, reason="failed",
                       body=body)  # fmt: skip
    mail_overdue(ctx.host, records, backup_conf(ctx.host), spool)
    deliver(spool)


def _overdue(ctx: Context, records: Records) -> int:
    if ctx.dry_run:
        late = overdue(records, backup_conf(ctx.host), ctx.settings.backup_max_age_h, time.time())
        ctx.emit_rows([{"vserver": g, "alert": "would mail"} for g in late], ("vserver", "alert"))
        return 0
    spool = backup_spool(ctx.host)
    subjects = mail_overdue(ctx.host, records, backup_conf(ctx.host), spool)
    deliver(spool)
    ctx.emit_rows(
        [{"vserver": s.split(":")[1], "alert": s} for s in subjects], ("vserver", "alert")
    )
    return 0


def _say(ctx: Context) -> Callable[[str], None]:
    return lambda line: print(f"vs-backup: {line}", file=ctx.stderr)


def _lock(ctx: Context) -> AbstractContextManager[None]:
    return locked(ctx.paths.state_dir / "borg" / "vs-backup.lock", what="vs-backup",
                  timeout_s=3600.0)  # fmt: skip


def _list(ctx: Context, repository: Repository) -> int:
    repository.require()
    rows = [
        {"vserver": a.guest, "archive": a.name, "time": a.time}
        for a in repository.complete(ctx.args.name)
    ]
    ctx.emit_rows(rows, ("vserver", "archive", "time"))
    return 0


def _check(ctx: Context, repository: Repository, records: Records) -> int:
    repository.require()
    if ctx.dry_run:
        print(f"would: verify {repository.path}", file=ctx.stderr)
        return 0
    with _lock(ctx), operation("vs-backup --check"):
        ok, why = repository.check(verify_data=ctx.args.verify_data)
    guests = sorted({a.guest for a in repository.complete()})
    for guest in guests:
        records.checked(guest, ok)
    when = timestamp(records.inventory.clock())
    ctx.emit_rows([{"repository": str(repository.path), "check": "ok" if ok else "FAILED",
                    "time": when, "guests": len(guests)}],
                  ("repository", "check", "time", "guests"))  # fmt: skip
    if not ok:
        print(f"vs-backup: {why}", file=ctx.stderr)
        return 5
    return 0


def _prune(ctx: Context, pool: Pool, repository: Repository, records: Records) -> int:
    policy = KeepPolicy.of_settings(ctx.settings)
    guests = [e.name for e in backup_conf(ctx.host).entries]
    if ctx.args.name:
        guests = [ctx.args.name]
    with _lock(ctx), operation("vs-backup --prune"):
        removed = prune_only(repository, records, policy, guests, dry_run=ctx.dry_run)
    verb = "would prune" if ctx.dry_run else "pruned"
    rows = [{"vserver": g, "archive": a, "action": verb} for g, names in removed.items()
            for a in names]  # fmt: skip
    ctx.emit_rows(rows, ("vserver", "archive", "action"))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of vs-backup: returns its exit status."""
    return run_command(build_parser(), handle, argv)
