"""vs-limit: show or change a guest's limits, hot."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from vstools.cli.common import (
    Context,
    add_guest_selection,
    add_limit_options,
    confirm,
    for_each_guest,
    guests_phrase,
    new_parser,
    run_command,
    selected_guests,
)
from vstools.guest.limits import (
    NewLimits,
    apply_limits,
    drift,
    limits_row,
    measure,
    read_enforced,
)
from vstools.host.cgrouplayout import host_cpu_count
from vstools.host.fsutil import locked
from vstools.host.journal import operation
from vstools.runtime.state import read_state
from vstools.storage.base import DIR_DISK_WARNING

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


def build_parser() -> argparse.ArgumentParser:
    """The parser of vs-limit: the guest selection and the limit options (none: only show)."""
    parser = new_parser("vs-limit", DESCRIPTION, mutating=True)
    add_guest_selection(parser)
    add_limit_options(parser)
    return parser


def handle(ctx: Context) -> int:
    """Run vs-limit: change the limits given (hot and in guest.conf; --all asks first) or only show
    them, a row per guest, with a warning where the kernel enforces something else than
    guest.conf. Returns the worst failure's exit code."""
    args, host = ctx.args, ctx.host
    new = NewLimits(args.rss, args.disk, args.tmpfs, args.proc, args.cpu)
    changing = new != NewLimits()
    names = selected_guests(ctx)
    if args.all and changing and names:
        confirm(ctx, f"Change the limits of {guests_phrase(names)}?")

    def one(name: str) -> dict[str, object]:
        """Change one guest's limits under its guest.conf lock (--dry-run: print the steps), then
        its row."""
        conf = host.guest(name).conf
        if changing and ctx.dry_run:
            for line in apply_limits(host, conf, new, dry_run=True):
                print(f"would: {line}", file=ctx.stderr)
        elif changing:
            lock = host.paths.run_dir / "locks" / f"{name}.conf.lock"
            with (
                locked(lock, what=f"guest.conf of {name}", timeout_s=5.0),
                operation(f"vs-limit {name}"),
            ):
                host.forget(name)  # read again under the lock
                apply_limits(host, host.guest(name).conf, new, dry_run=False)
            host.forget(name)
            conf = host.guest(name).conf
        if changing and new.disk_mb is not None and conf.storage == "dir":
            print(f"vs-limit: {name}: warning: {DIR_DISK_WARNING}", file=ctx.stderr)
        state = read_state(host.paths.guest_run_dir(name))
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
        return limits_row(ctx.hostname, conf, measure(host, conf, state), enforced, cpus)

    ctx.emit_rows(for_each_guest(ctx, names, one), FIELDS)
    return ctx.exit_code()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of vs-limit: returns its exit status."""
    return run_command(build_parser(), handle, argv)
