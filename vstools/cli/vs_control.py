"""vs-control: show or change the state of guests."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from vstools.cli.common import (
    Context,
    add_guest_selection,
    confirm,
    guests_phrase,
    new_parser,
    run_command,
)
from vstools.errors import VSError

DESCRIPTION = """\
Show or change the state of guests: enabled or disabled (started with the host), running or
stopped, frozen. Without an action, shows the state. Several guests (--all) are handled one after
the other; a failure on one is reported and the others are still handled. --all with --stop,
--restart, --freeze or --disable asks for confirmation first when stdin is a terminal (not with
--yes); any answer but y/yes exits 7 and changes nothing.
Output: host:vserver:enabled|disabled:running|stopped"""

FIELDS = ("host", "vserver", "enabled", "running")
# What --all asks to confirm: the actions that take guests down or away from the next boot.
CONFIRMED = ("stop", "restart", "freeze", "disable")


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("vs-control", DESCRIPTION, mutating=True)
    add_guest_selection(parser)
    run = parser.add_mutually_exclusive_group()
    for flag, text in (
        ("start", "start the guest"),
        ("stop", "stop the guest"),
        ("restart", "stop then start"),
        ("freeze", "suspend every process (cgroup freezer)"),
        ("thaw", "resume a frozen guest"),
    ):
        run.add_argument(f"--{flag}", action="store_true", help=text)
    boot = parser.add_mutually_exclusive_group()
    boot.add_argument("--enable", action="store_true", help="start with the host")
    boot.add_argument("--disable", action="store_true", help="do not start with the host")
    parser.add_argument(
        "--enabled-only",
        action="store_true",
        help="with --all: only the guests enabled to start with the host (what"
        " vs-guests.service starts at boot)",
    )
    parser.add_argument(
        "--foreground",
        action="store_true",
        help="with --start: run the guest's supervisor in the foreground until"
        " the guest stops (what vs-guest@.service runs)",
    )
    return parser


def _act(ctx: Context, name: str) -> None:
    from vstools import guest
    from vstools.journal import operation

    args = ctx.args
    paths, settings = ctx.paths, ctx.settings
    actions = [
        flag
        for flag in ("enable", "disable", "stop", "restart", "start", "freeze", "thaw")
        if getattr(args, flag)
    ]
    for action in actions:
        what = f"vs-control --{action} {name}"
        if ctx.dry_run:
            print(f"would: {what}", file=ctx.stderr)
            continue
        with operation(what):
            if action in ("enable", "disable"):
                guest.set_enabled(paths, name, action == "enable")
            elif action == "stop" and name in STOP_REQUESTED:
                guest.wait_stopped(paths, settings, name)  # asked by _request_all_stops
            elif action == "stop" and ctx.args.all and not _running(ctx, name):
                continue  # --all: a stopped guest is not an error
            elif action == "stop" or (action == "restart" and _running(ctx, name)):
                guest.stop_guest(paths, settings, name)
            if action == "start" and ctx.args.all and _running(ctx, name):
                continue  # --all: a running guest is not an error
            if action in ("start", "restart"):
                guest.start_guest(paths, settings, name, foreground=args.foreground)
            elif action in ("freeze", "thaw"):
                guest.freeze_guest(paths, name, thaw=action == "thaw")


def _acts(ctx: Context) -> bool:
    """Whether the command changes something (an action flag), not only shows."""
    return not ctx.dry_run and any(
        getattr(ctx.args, flag)
        for flag in ("enable", "disable", "stop", "restart", "start", "freeze", "thaw")
    )


# Guests whose supervisor was already sent its stop request by _request_all_stops.
STOP_REQUESTED: set[str] = set()


def _request_all_stops(ctx: Context, names: list[str]) -> None:
    from vstools import guest

    for name in names:
        if _running(ctx, name):
            try:
                asked = guest.request_stop(ctx.paths, name)
            except VSError:
                continue  # reported when this guest's turn comes
            if asked:  # an orphan has no supervisor to ask: its turn stops it
                STOP_REQUESTED.add(name)


def _enabled(ctx: Context, name: str) -> bool:
    from vstools.hostconfig import load_guest_conf

    try:
        return load_guest_conf(ctx.paths, name).enabled
    except VSError:
        return True  # keep it: its error is reported when its turn comes


def _running(ctx: Context, name: str) -> bool:
    """Running or orphaned: what --all skips for a start and must reach for a stop."""
    from vstools import guest

    return guest.is_active(ctx.paths, ctx.settings, name)


def handle(ctx: Context) -> int:
    from vstools import guest
    from vstools.hostconfig import list_guests

    names = list_guests(ctx.paths) if ctx.args.all else [ctx.args.name]
    if ctx.args.enabled_only:
        names = [n for n in names if _enabled(ctx, n)]
    wide = [flag for flag in CONFIRMED if getattr(ctx.args, flag)]
    if ctx.args.all and wide and names:
        confirm(ctx, f"{' and '.join(wide).capitalize()} {guests_phrase(names)}?")
    failures: list[VSError] = []
    rows = []
    STOP_REQUESTED.clear()
    if ctx.args.stop and len(names) > 1 and not ctx.dry_run:
        _request_all_stops(ctx, names)  # every guest shuts down at once, not one by one
    for name in names:
        acted = False
        try:
            _act(ctx, name)
            acted = _acts(ctx)
        except VSError as exc:
            failures.append(exc)
            print(f"vs-control: {name}: {exc}", file=ctx.stderr)
        try:
            # After an action that worked, a guest.conf broken meanwhile is a warning: a stop
            # must always work (catalogue A9); plain status reports it as the error it is.
            status = guest.guest_status(ctx.paths, ctx.settings, name, lenient=acted)
        except VSError as exc:
            if ctx.args.name and not failures:
                raise  # one guest: its error is the command's
            failures.append(exc)
            print(f"vs-control: {name}: {exc}", file=ctx.stderr)
            continue
        if status.problem:
            print(f"vs-control: {name}: warning: {status.problem}", file=ctx.stderr)
        rows.append(
            {
                "host": ctx.hostname,
                "vserver": name,
                "enabled": "enabled" if status.enabled else "disabled",
                "running": ("running" if status.running else "stopped"),
                "frozen": status.frozen,
                "init_pid": status.init_pid,
                "orphaned": status.orphaned,
            }
        )
    if ctx.json:
        ctx.emit_json(rows)
    else:
        ctx.emit_rows(rows, FIELDS)
    if failures:
        return int(max(f.exit_code for f in failures))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), handle, argv)
