"""vs-move: master: move a guest between slaves."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from vstools.cli.common import Context, arg_type, new_parser, progress_line, run_command
from vstools.config.values import parse_guest_name, parse_host
from vstools.errors import UsageError, VSError
from vstools.host.journal import operation
from vstools.pool.inventory import Inventory, inventory_path
from vstools.pool.move import HOW, MoveReport, move_guest
from vstools.pool.slaves import Pool
from vstools.pool.store import store_of

GUEST = arg_type(parse_guest_name, "name")
HOST = arg_type(parse_host, "host")

DESCRIPTION = """\
Master only: move a guest to another slave with the shortest stop. While it runs, passes copy
it (from a snapshot on btrfs, live on dir), repeated while each moves less than the one before
(at most 4); then it is held (it refuses to start at its source), stopped, copied once more,
verified file by file, put in place and started at the destination. The source copy is kept as
NAME.moved until the guest runs there, then removed. A failure before it runs at the
destination rolls back: it runs at its source again. Killed at any step, the same command
finishes the move. Without --dst_host, placement chooses (and says why). --all --src_host H
empties H, guest by guest.
Output: one line per guest: source:destination:vserver:seconds:stopped_seconds:resumed."""


def build_parser() -> argparse.ArgumentParser:
    """The parser of vs-move: --name or --all, --dst_host, --src_host and --1step."""
    parser = new_parser("vs-move", DESCRIPTION, mutating=True)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--name", type=GUEST, help="the guest")
    which.add_argument(
        "--all", action="store_true", help="every guest of --src_host (empty it for maintenance)"
    )
    parser.add_argument(
        "--dst_host", type=HOST, help="the destination slave (default: placement chooses)"
    )
    parser.add_argument("--src_host", type=HOST, help="the source slave (default: where it is)")
    parser.add_argument(
        "--1step",
        dest="one_step",
        action="store_true",
        help="stop first and copy once (no pass while it runs)",
    )
    return parser


def handle(ctx: Context) -> int:
    """Run vs-move: one guest, or every guest of --src_host; a line per guest."""
    args = ctx.args
    if args.all and args.src_host is None:
        raise UsageError("--all needs --src_host: the slave to empty")
    pool = Pool(ctx.host)
    if args.all and args.src_host == args.dst_host:
        raise UsageError("--dst_host is the slave being emptied")
    names = [args.name] if args.name else _guests_of(pool, args.src_host)
    if ctx.dry_run:
        target = args.dst_host or "the slave placement chooses"
        for name in names:
            print(f"would: move {name} from {args.src_host or 'where it is'} to {target}",
                  file=ctx.stderr)  # fmt: skip
        return 0
    inventory = Inventory(inventory_path(ctx.paths.state_dir))
    rows = []
    try:
        for name in names:
            try:
                with operation(f"vs-move {name}"):
                    report = move_guest(
                        pool,
                        inventory,
                        store_of(ctx.paths.state_dir),
                        name,
                        source=args.src_host,
                        target=args.dst_host,
                        one_step=args.one_step,
                        env=dict(ctx.env),
                        progress=progress_line(ctx),
                        say=lambda line: print(f"vs-move: {line}", file=ctx.stderr),
                    )
            except VSError as exc:
                if not args.all:
                    raise
                ctx.fail(name, exc)
                continue
            _say(ctx, report)
            rows.append(_row(report))
    finally:
        inventory.close()
    if ctx.json:
        ctx.emit_json(rows)
    else:
        ctx.emit_lines(":".join(str(v) for v in row.values()) for row in rows)
    return ctx.exit_code()


def _guests_of(pool: Pool, host: str) -> list[str]:
    """The guests of ``host``, the running ones first (their stop is the one that counts)."""
    facts = pool.remote(host).call("guests_facts")
    return [g["name"] for g in sorted(facts, key=lambda g: (not g.get("running"), g["name"]))]


def _row(report: MoveReport) -> dict[str, object]:
    stopped = "" if report.stopped_s is None else round(report.stopped_s, 2)
    return {
        "source": report.source,
        "destination": report.target,
        "vserver": report.name,
        "seconds": round(report.seconds, 2),
        "stopped_seconds": stopped,
        "resumed": report.resumed or "",
    }


def _say(ctx: Context, report: MoveReport) -> None:
    """The move's details on stderr: its passes, the stop, the path the files took."""
    passes = ", ".join(f"{b / (1 << 20):.1f}" for b in report.live_passes)
    lines = [
        f"{len(report.live_passes)} passes while it ran ({passes} MB)" if passes else "",
        f"final pass {report.final_bytes / (1 << 20):.1f} MB",
        _stopped(report),
        report.how or HOW,
    ]
    print(f"vs-move: {report.name}: " + "; ".join(x for x in lines if x), file=ctx.stderr)
    for note in report.notes:
        print(f"vs-move: {report.name}: {note}", file=ctx.stderr)


def _stopped(report: MoveReport) -> str:
    if report.stopped_s is None:
        return ""
    text = f"stopped {report.stopped_s:.2f} s"
    if report.shutdown_s is not None:
        text += f" (after its own shutdown, {report.shutdown_s:.2f} s)"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of vs-move: returns its exit status."""
    return run_command(build_parser(), handle, argv)
