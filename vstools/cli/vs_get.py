"""vs-get: master: copy a guest from a slave to the master's store."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from vstools.cli.common import Context, arg_type, new_parser, progress_line, run_command
from vstools.config.values import parse_guest_name, parse_host
from vstools.host.journal import operation
from vstools.pool.inventory import Inventory, inventory_path
from vstools.pool.ops import get_guest
from vstools.pool.slaves import Pool
from vstools.pool.store import store_of

GUEST = arg_type(parse_guest_name, "name")
HOST = arg_type(parse_host, "host")

DESCRIPTION = """\
Master only: copy a guest (its root filesystem and its configuration directory) from the slave
that holds it into the master's store (STATE_DIR/pool/store/NAME), with rsync over SSH: hard
links, ACLs, xattrs, file capabilities, sparse files, devices and numeric owners kept. A
running guest is read from a read-only snapshot (btrfs, lvm) or, on dir storage, copied live
then frozen for a final pass and the verification (the frozen time is printed). The copy is
made aside, verified against its source (checksums), then put in place of the previous one.
Killed at any step, the same command resumes it.
Output: one summary line."""


def build_parser() -> argparse.ArgumentParser:
    """The parser of vs-get: the guest's --name and the slave to copy it from (--host)."""
    parser = new_parser("vs-get", DESCRIPTION, mutating=True)
    parser.add_argument("--name", required=True, type=GUEST, help="the guest")
    parser.add_argument(
        "--host", type=HOST, help="the slave to copy from (default: the one that holds it)"
    )
    return parser


def handle(ctx: Context) -> int:
    """Run vs-get: copy the guest into the store and print a summary line."""
    name = ctx.args.name
    if ctx.dry_run:
        print(f"would: copy {name} into {store_of(ctx.paths.state_dir).copy(name)}",
              file=ctx.stderr)  # fmt: skip
        return 0
    pool = Pool(ctx.host)
    inventory = Inventory(inventory_path(ctx.paths.state_dir))
    try:
        with operation(f"vs-get {name}"):
            report = get_guest(
                pool,
                inventory,
                store_of(ctx.paths.state_dir),
                name,
                host=ctx.args.host,
                env=dict(ctx.env),
                progress=progress_line(ctx),
            )
    finally:
        inventory.close()
    how = "from a snapshot" if report.snapshot else ""
    if report.frozen_s is not None:
        how = f"frozen {report.frozen_s:.2f} s"
    fields = {
        "host": report.host,
        "vserver": name,
        "mb": round(report.bytes / (1 << 20), 1),
        "seconds": round(report.seconds, 2),
        "how": how or "stopped",
        "resumed": report.resumed or "",
    }
    for note in report.notes:
        print(f"vs-get: {name}: {note}", file=ctx.stderr)
    if ctx.json:
        ctx.emit_json(fields)
    else:
        ctx.emit_lines([":".join(str(v) for v in fields.values())])
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of vs-get: returns its exit status."""
    return run_command(build_parser(), handle, argv)
