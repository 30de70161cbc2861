"""vs-monitor: the monitor daemon."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from vstools.cli.common import Context, add_guest_selection, new_parser, run_command
from vstools.errors import UsageError
from vstools.host.cgrouplayout import probe_layout
from vstools.monitor.daemon import serve, write_textfile
from vstools.monitor.watch import Monitor

DESCRIPTION = """\
Watch guests (all by default) and mail MONITOR_MAILTO when a threshold is crossed, a limit is
hit, the load or the listening sockets change, or a guest stops. Runs under systemd
(vs-monitor.service, or vs-monitor@NAME.service for one guest): Type=notify with a watchdog,
SIGHUP re-reads the configuration. Also writes every guest's figures for Prometheus into
PROMETHEUS_TEXTFILE_DIR/vs_tools.prom (when that directory exists). With --once, checks each
guest once, delivers the spooled mails and prints host:vserver:state:alerts (the open alerts,
or -)."""

FIELDS = ("host", "vserver", "state", "alerts")


def build_parser() -> argparse.ArgumentParser:
    """The parser of vs-monitor: the guest to watch (default: all) and --once."""
    parser = new_parser("vs-monitor", DESCRIPTION, mutating=True)
    add_guest_selection(parser, required=False)
    parser.add_argument(
        "--once",
        action="store_true",
        help="check once, deliver the spooled mails and exit (with --dry-run: mail nothing,"
        " save nothing, print the mails that would go)",
    )
    return parser


def handle(ctx: Context) -> int:
    """Run vs-monitor: the daemon until it is stopped, or with --once one check of each guest, the
    spool delivered (not with --dry-run) and a row per guest. --dry-run needs --once."""
    args = ctx.args
    if ctx.dry_run and not args.once:
        raise UsageError("--dry-run needs --once (the daemon always mails)")
    settings, paths = ctx.settings, ctx.paths
    if args.name:
        ctx.host.guest(args.name)  # not defined or broken: say so now, exit 3 or 1
    # VS_CGROUP_MOUNTS: a mounts table to find the cgroup hierarchies in, instead of the
    # kernel's (the benchmark and tests point it at a tree laid out like /sys/fs/cgroup).
    layout = probe_layout(ctx.env.get("VS_CGROUP_MOUNTS") or "/proc/self/mounts")
    monitor = Monitor(
        paths,
        settings,
        ctx.hostname,
        layout,
        names=[args.name] if args.name else None,
        dry_run=ctx.dry_run,
    )
    if not args.once:
        return serve(monitor, ctx.env)
    try:
        monitor.rescan()
        for name in sorted(monitor.watches):
            monitor.run_check(name)
        rows = []
        for name in sorted(set(monitor.watches) | set(monitor.skipped)):
            watch = monitor.watches.get(name)
            if watch is None:
                state = "not watched"
            elif name in monitor.hung:
                state = "hung"
            else:
                state = "running" if watch.figures and watch.figures.running else "stopped"
            alerts = ",".join(sorted(watch.book.active)) if watch else ""
            rows.append(
                {"host": ctx.hostname, "vserver": name, "state": state, "alerts": alerts or "-"}
            )
        if not ctx.dry_run:
            write_textfile(monitor)
    finally:
        monitor.close()
    for subject, notice in monitor.dry_notices:
        print(f"would mail: {subject}: {notice.detail.splitlines()[0]}", file=ctx.stderr)
    if not ctx.dry_run:
        _, why = monitor.spool.deliver()
        if why is not None:
            left = len(monitor.spool.pending())
            print(f"vs-monitor: {left} mail(s) kept in the spool: {why}", file=ctx.stderr)
    ctx.emit_rows(rows, FIELDS)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of vs-monitor: returns its exit status."""
    return run_command(build_parser(), handle, argv)
