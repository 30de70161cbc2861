"""vs-snapshot: snapshots of a guest's root on btrfs and lvm: create, list, revert, delete."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from vstools.cli.common import Context, arg_type, confirm, new_parser, run_command
from vstools.config.values import parse_guest_name
from vstools.errors import UsageError
from vstools.guest.lifecycle import is_active
from vstools.guest.snapshots import (
    check_label,
    create_steps,
    default_label,
    delete_steps,
    list_snapshots,
    revert,
    revert_steps,
    snapshot_path,
)
from vstools.host.journal import operation
from vstools.plan import Step, apply_steps

GUEST = arg_type(parse_guest_name, "name")


def _label(text: str) -> str:
    try:
        return check_label(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


LABEL = arg_type(_label, "label")
FIELDS = ("vserver", "label", "path")

DESCRIPTION = """\
Snapshots of a guest's root filesystem, on this host: --create [LABEL] takes a read-only one
(btrfs subvolume, LVM lvcreate -s), --list lists them, --revert LABEL makes the root what the
snapshot holds (a running guest is stopped first and started again after; asked on a
terminal), --delete LABEL removes one. STORAGE=dir has no snapshots: refused.
Output: one line per snapshot: vserver:label:path."""


def build_parser() -> argparse.ArgumentParser:
    """The parser of vs-snapshot."""
    parser = new_parser("vs-snapshot", DESCRIPTION, mutating=True)
    parser.add_argument("--name", required=True, type=GUEST, help="the guest")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--create", nargs="?", const="", type=_label_or_empty, metavar="LABEL",
                      help="take a snapshot (default label: sYYYYMMDDTHHMMSSZ)")  # fmt: skip
    what.add_argument("--list", action="store_true", help="list the snapshots (the default)")
    what.add_argument("--revert", type=LABEL, metavar="LABEL", help="revert to a snapshot")
    what.add_argument("--delete", type=LABEL, metavar="LABEL", help="delete a snapshot")
    return parser


def _label_or_empty(text: str) -> str:
    return _label(text) if text else ""


def handle(ctx: Context) -> int:
    """Run vs-snapshot."""
    args, host, name = ctx.args, ctx.host, ctx.args.name
    if args.create is not None:
        label = args.create or default_label(time.time())
        _apply(ctx, f"vs-snapshot --create {label} {name}", create_steps(host, name, label))
        rows = [{"vserver": name, "label": label, "path": str(snapshot_path(host, name, label))}]
        ctx.emit_rows(rows, FIELDS)
        return 0
    if args.delete is not None:
        _apply(ctx, f"vs-snapshot --delete {args.delete} {name}",
               delete_steps(host, name, args.delete))  # fmt: skip
        return 0
    if args.revert is not None:
        steps = revert_steps(host, name, args.revert)
        running = is_active(host, name)
        if ctx.dry_run:
            if running:
                print(f"would: stop {name}", file=ctx.stderr)
            _show(ctx, steps)
            if running:
                print(f"would: start {name} again", file=ctx.stderr)
            return 0
        if running:
            confirm(ctx, f"guest {name} runs: stop it, revert it to {args.revert}, start it?")
        with operation(f"vs-snapshot --revert {args.revert} {name}"):
            restarted = revert(host, name, args.revert)
        again = " and started again" if restarted else ""
        print(f"vs-snapshot: {name}: reverted to {args.revert}{again}", file=ctx.stderr)
        return 0
    rows = [{"vserver": s.vserver, "label": s.label, "path": s.path}
            for s in list_snapshots(host, name)]  # fmt: skip
    ctx.emit_rows(rows, FIELDS)
    return 0


def _show(ctx: Context, steps: list[Step]) -> None:
    for step in steps:
        print(f"would: {step.description}", file=ctx.stderr)


def _apply(ctx: Context, what: str, steps: list[Step]) -> None:
    if ctx.dry_run:
        _show(ctx, steps)
        return
    with operation(what):
        apply_steps(steps)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of vs-snapshot: returns its exit status."""
    return run_command(build_parser(), handle, argv)
