"""vs-control: show or change the state of guests."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from vstools.cli.common import (
    Context,
    add_guest_selection,
    confirm,
    finish,
    for_each_guest,
    guests_phrase,
    new_parser,
    run_command,
    selected_guests,
)
from vstools.errors import UsageError, VSError
from vstools.guest.lifecycle import (
    freeze_guest,
    guest_status,
    is_active,
    request_stop,
    set_enabled,
    wait_stopped,
)
from vstools.host.journal import operation

DESCRIPTION = """\
Show or change the state of guests: enabled or disabled (started with the host), running or
stopped, frozen. Without an action, shows the state. Several guests (--all) are handled one after
the other, but for --start (--parallel of them at once) and --stop (every stop requested at
once); a failure on one is reported and the others are still handled. --all with --stop,
--restart, --freeze or --disable asks for confirmation first when stdin is a terminal (not with
--yes); any answer but y/yes exits 7 and changes nothing.
Output: host:vserver:enabled|disabled:running|stopped"""

FIELDS = ("host", "vserver", "enabled", "running")
# What --parallel defaults to (vstools.guest.batch.DEFAULT_PARALLEL, not imported: showing the
# state does not load the start machinery) and its bound.
DEFAULT_PARALLEL = 8
MAX_PARALLEL = 64
# What --all asks to confirm: the actions that take guests down or away from the next boot.
CONFIRMED = ("stop", "restart", "freeze", "disable")


def build_parser() -> argparse.ArgumentParser:
    """The parser of vs-control: the guest selection, one of --start, --stop, --restart, --freeze
    and --thaw, --enable or --disable, --enabled-only and --foreground."""
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
        "--parallel",
        type=_parallel,
        default=None,
        metavar="N",
        help="with --all --start: start at most N guests at once (default"
        f" {DEFAULT_PARALLEL}; 1: one after the other)",
    )
    parser.add_argument(
        "--kill",
        action="store_true",
        help="with --stop: kill every process of the guest at once instead of"
        " sending its init the shutdown signal (as lxc-stop -k)",
    )
    parser.add_argument(
        "--foreground",
        action="store_true",
        help="with --start: run the guest's supervisor in the foreground until"
        " the guest stops (what vs-guest@.service runs)",
    )
    return parser


def _parallel(text: str) -> int:
    value = int(text) if text.isascii() and text.isdigit() else 0
    if not 1 <= value <= MAX_PARALLEL:
        raise argparse.ArgumentTypeError(f"a number from 1 to {MAX_PARALLEL}, not {text!r}")
    return value


ACTIONS = ("enable", "disable", "stop", "restart", "start", "freeze", "thaw")


def _act(ctx: Context, name: str, asked: set[str], started: dict[str, VSError | None]) -> None:
    """The actions asked for, in order, on one guest (``asked``: guests whose supervisor was
    already sent its stop request by ``_request_all_stops``; ``started``: the outcome of each
    start ``_start_all`` already made)."""
    host, args = ctx.host, ctx.args
    actions = [flag for flag in ACTIONS if getattr(args, flag)]
    if not actions:
        return
    # Starting and stopping pull in the runtime, network and firewall stacks (about 0.06 s of
    # imports): only the commands that do so pay for them, showing the state does not.
    from vstools.guest.start import start_guest
    from vstools.guest.stop import stop_guest

    for action in actions:
        what = f"vs-control --{action} {name}"
        if ctx.dry_run:
            print(f"would: {what}", file=ctx.stderr)
            continue
        with operation(what):
            if action in ("enable", "disable"):
                set_enabled(host, name, action == "enable")
            elif action == "stop" and name in asked:
                wait_stopped(host, name)
            elif action == "stop" and args.all and not is_active(host, name):
                continue  # --all: a stopped guest is not an error
            elif action == "stop" or (action == "restart" and is_active(host, name)):
                stop_guest(host, name, kill=args.kill)
            if action == "start" and name in started:
                outcome = started[name]
                if outcome is not None:
                    raise outcome
                continue
            if action == "start" and args.all and is_active(host, name):
                continue  # --all: a running guest is not an error
            if action in ("start", "restart"):
                start_guest(host, name, foreground=args.foreground)
            elif action in ("freeze", "thaw"):
                freeze_guest(host, name, thaw=action == "thaw")


def _start_all(ctx: Context, names: list[str]) -> dict[str, VSError | None]:
    """--all --start: start the guests that do not run, --parallel of them at once; each
    guest's outcome, reported in its own turn."""
    from vstools.guest.batch import start_guests

    stopped = [n for n in names if not is_active(ctx.host, n)]
    parallel = ctx.args.parallel or DEFAULT_PARALLEL
    return start_guests(ctx.host, stopped, parallel=parallel)


def _request_all_stops(ctx: Context, names: list[str]) -> set[str]:
    """Ask every running guest's supervisor to stop at once (not one after the other); the
    guests asked. An orphan has no supervisor to ask: its own turn stops it."""
    asked = set()
    for name in names:
        if is_active(ctx.host, name):
            try:
                if request_stop(ctx.host, name, kill=ctx.args.kill):
                    asked.add(name)
            except VSError:
                continue  # reported when this guest's turn comes
    return asked


def _acts(ctx: Context) -> bool:
    """Whether the command changes something (an action flag), not only shows."""
    return not ctx.dry_run and any(getattr(ctx.args, flag) for flag in ACTIONS)


def _enabled(ctx: Context, name: str) -> bool:
    try:
        return ctx.host.guest_conf(name).enabled
    except VSError:
        return True  # keep it: its error is reported when its turn comes


def handle(ctx: Context) -> int:
    """Run vs-control: confirm a wide change with --all, act on each guest in turn (--stop asks
    every supervisor at once), then show each guest's state. Returns the worst failure's code."""
    names = selected_guests(ctx)
    if ctx.args.enabled_only:
        names = [n for n in names if _enabled(ctx, n)]
    wide = [flag for flag in CONFIRMED if getattr(ctx.args, flag)]
    if ctx.args.all and wide and names:
        confirm(ctx, f"{' and '.join(wide).capitalize()} {guests_phrase(names)}?")
    if ctx.args.kill and not (ctx.args.stop or ctx.args.restart):
        raise UsageError("--kill goes with --stop or --restart")
    if ctx.args.parallel and not (ctx.args.all and ctx.args.start):
        raise UsageError("--parallel goes with --all --start")
    asked = set()
    if ctx.args.stop and len(names) > 1 and not ctx.dry_run:
        asked = _request_all_stops(ctx, names)  # every guest shuts down at once
    started: dict[str, VSError | None] = {}
    if ctx.args.start and ctx.args.all and not ctx.dry_run and not ctx.args.foreground:
        started = _start_all(ctx, names)  # --parallel at once; reported in each one's turn

    def one(name: str) -> dict[str, object]:
        """Act on one guest (a failure is reported, its state still shown), then its state row."""
        acted = False
        try:
            _act(ctx, name, asked, started)
            acted = _acts(ctx)
        except VSError as exc:
            ctx.fail(name, exc)
        # After an action that worked, a guest.conf broken meanwhile is a warning: a stop must
        # always work (catalogue A9); plain status reports it as the error it is.
        status = guest_status(ctx.host, name, lenient=acted)
        if status.problem:
            print(f"vs-control: {name}: warning: {status.problem}", file=ctx.stderr)
        return {
            "host": ctx.hostname,
            "vserver": name,
            "enabled": "enabled" if status.enabled else "disabled",
            "running": "running" if status.running else "stopped",
            "frozen": status.frozen,
            "init_pid": status.init_pid,
            "orphaned": status.orphaned,
        }

    rows = for_each_guest(ctx, names, one)
    if ctx.json:
        ctx.emit_json(rows)
    else:
        ctx.emit_rows(rows, FIELDS)
    return ctx.exit_code()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of vs-control: returns its exit status (as the command itself, without
    ``argv``, it ends the process with it at once: see ``finish``)."""
    code = run_command(build_parser(), handle, argv)
    if argv is None:
        finish(code)
    return code
