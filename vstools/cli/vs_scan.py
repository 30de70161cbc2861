"""vs-scan: master: where every guest is and in what state."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from vstools.cli.common import Context, arg_type, new_parser, run_command
from vstools.config.values import parse_guest_name, parse_host
from vstools.errors import ExitCode
from vstools.pool.inventory import Inventory, inventory_path
from vstools.pool.scan import scan
from vstools.pool.slaves import Pool

GUEST = arg_type(parse_guest_name, "name")
HOST = arg_type(parse_host, "host")

DESCRIPTION = """\
Master only: ask every slave of slaves.conf (or --host) which guests it holds and in what
state, over SSH, all at once; refresh the master's inventory; report what the pool holds twice
(a name, an address or a context number on two hosts, a guest running on two hosts). A slave
that does not answer is reported on stderr and the others are still shown (exit 5); a conflict
is reported too (exit 4).
Output: host:vserver:enabled|disabled:running|stopped"""

FIELDS = ("host", "vserver", "enabled", "running")


def build_parser() -> argparse.ArgumentParser:
    """The parser of vs-scan: --name and --host narrow the scan."""
    parser = new_parser("vs-scan", DESCRIPTION, mutating=False)
    parser.add_argument("--name", type=GUEST, help="only this guest")
    parser.add_argument("--host", type=HOST, help="only this slave")
    return parser


def handle(ctx: Context) -> int:
    """Run vs-scan: ask the slaves, refresh the inventory, print one line per guest."""
    pool = Pool(ctx.host)
    inventory = Inventory(inventory_path(ctx.paths.state_dir))
    try:
        found = scan(pool, inventory, [ctx.args.host] if ctx.args.host else None)
    finally:
        inventory.close()
    rows = [
        {
            "host": row.host,
            "vserver": row.name,
            "enabled": "enabled" if row.enabled else "disabled",
            "running": "running" if row.running else "stopped",
            "ip": row.ip,
            "context": row.context,
            "vlan": row.vlan,
            "storage": row.storage,
            "disk_used_mb": row.disk_used_mb,
        }
        for row in found.rows
        if ctx.args.name is None or row.name == ctx.args.name
    ]
    for host, reason in found.unreachable:
        print(f"vs-scan: {host}: {reason}", file=ctx.stderr)
    for conflict in found.conflicts:
        print(f"vs-scan: conflict: {conflict}", file=ctx.stderr)
    if ctx.json:
        ctx.emit_json(
            {
                "guests": rows,
                "unreachable": [{"host": h, "error": e} for h, e in found.unreachable],
                "conflicts": found.conflicts,
            }
        )
    else:
        ctx.emit_rows(rows, FIELDS)
    if found.unreachable:
        return int(ExitCode.HOST)
    return int(ExitCode.STATE) if found.conflicts else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of vs-scan: returns its exit status."""
    return run_command(build_parser(), handle, argv)
