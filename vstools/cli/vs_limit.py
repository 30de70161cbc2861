"""vs-limit: show or change a guest's limits, hot."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from vstools.cli.common import (
    Context,
    add_guest_selection,
    add_limit_options,
    confirm,
    guests_phrase,
    new_parser,
    run_command,
)
from vstools.errors import VSError

DESCRIPTION = """\
Show or change limits, hot on a running guest and persisted in guest.conf. A change is one
operation: if a step fails (the kernel refuses to lower the memory limit below what the guest
uses, say), the steps already done are undone and the error says so. A change with --all asks
for confirmation first when stdin is a terminal (not with --yes); any answer but y/yes exits 7
and changes nothing.
The limits shown for a running guest are the ones the kernel enforces, read back from its
cgroup and its /tmp; where they differ from guest.conf (changed behind vs-tools' back) a warning
says so, and vs-limit with guest.conf's values puts them back.
Output: host:vserver:rss:disk:tmpfs:proc:cpu, each used/limit: rss, disk and tmpfs in MB, proc
in processes, cpu as CPU seconds used / share of the host's whole CPU capacity."""

FIELDS = ("host", "vserver", "rss", "disk", "tmpfs", "proc", "cpu")
DIR_DISK_WARNING = (
    "STORAGE=dir enforces no disk limit: DISK_LIMIT is measured and vs-monitor alerts past"
    " DISK_THRESHOLD (btrfs and lvm storage enforce it)"
)


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("vs-limit", DESCRIPTION, mutating=True)
    add_guest_selection(parser)
    add_limit_options(parser)
    return parser


def handle(ctx: Context) -> int:
    from vstools.cgroup import host_cpu_count
    from vstools.fsutil import locked
    from vstools.gueststate import read_state
    from vstools.hostconfig import list_guests, load_guest
    from vstools.journal import operation
    from vstools.limits import NewLimits, apply_limits, drift, limits_row, measure, read_enforced

    args = ctx.args
    new = NewLimits(args.rss, args.disk, args.tmpfs, args.proc, args.cpu)
    changing = new != NewLimits()
    names = list_guests(ctx.paths) if args.all else [args.name]
    if args.all and changing and names:
        confirm(ctx, f"Change the limits of {guests_phrase(names)}?")
    rows, failures = [], []
    for name in names:
        try:
            conf = load_guest(ctx.paths, name).conf
            if changing and ctx.dry_run:
                for line in apply_limits(ctx.paths, conf, new, dry_run=True):
                    print(f"would: {line}", file=ctx.stderr)
            elif changing:
                with (
                    locked(
                        ctx.paths.run_dir / "locks" / f"{name}.conf.lock",
                        what=f"guest.conf of {name}",
                        timeout_s=5.0,
                    ),
                    operation(f"vs-limit {name}"),
                ):
                    conf = load_guest(ctx.paths, name).conf  # re-read under the lock
                    apply_limits(ctx.paths, conf, new, dry_run=False)
                conf = load_guest(ctx.paths, name).conf
            if changing and new.disk_mb is not None and conf.storage == "dir":
                print(
                    f"vs-limit: {name}: warning: {DIR_DISK_WARNING}",
                    file=ctx.stderr,
                )
            state = read_state(ctx.paths.guest_run_dir(name))
            enforced, cpus = None, host_cpu_count()
            if state is not None:
                enforced = read_enforced(state)
                drifted = drift(conf, enforced, cpus)
                if drifted:
                    print(
                        f"vs-limit: {name}: warning: the kernel enforces {', '.join(drifted)};"
                        f" vs-limit --name {name} with guest.conf's values restores them",
                        file=ctx.stderr,
                    )
            usage = measure(ctx.paths, conf, state)
            rows.append(limits_row(ctx.hostname, conf, usage, enforced, cpus))
        except VSError as exc:
            if args.name:
                raise
            failures.append(exc)
            print(f"vs-limit: {name}: {exc}", file=ctx.stderr)
    ctx.emit_rows(rows, FIELDS)
    return int(max((f.exit_code for f in failures), default=0))


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), handle, argv)
