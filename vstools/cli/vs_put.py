"""vs-put: master: copy a guest from the master's store to a slave."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from vstools.cli.common import Context, arg_type, new_parser, progress_line, run_command
from vstools.config.values import parse_guest_name, parse_host
from vstools.host.journal import operation
from vstools.pool.inventory import Inventory, inventory_path
from vstools.pool.ops import put_guest, stored_conf
from vstools.pool.slaves import Pool
from vstools.pool.store import store_of

GUEST = arg_type(parse_guest_name, "name")
HOST = arg_type(parse_host, "host")

DESCRIPTION = """\
Master only: copy a guest from the master's store to a slave (--host, or the selectable slave
with the most free memory and disk that can hold it: placement prints why). Refused before
anything is sent when the slave has the guest, its address or its context already, lacks its
network, room, extended attributes or ACLs. The slave receives it aside; it is verified
against the store (checksums), then put in place, stopped. Killed at any step, the same
command resumes it.
Output: one summary line."""


def build_parser() -> argparse.ArgumentParser:
    """The parser of vs-put: the guest's --name and the destination slave (--host)."""
    parser = new_parser("vs-put", DESCRIPTION, mutating=True)
    parser.add_argument("--name", required=True, type=GUEST, help="the guest")
    parser.add_argument(
        "--host", type=HOST, help="the destination slave (default: placement chooses)"
    )
    return parser


def handle(ctx: Context) -> int:
    """Run vs-put: copy the stored guest to a slave and print a summary line."""
    name = ctx.args.name
    store = store_of(ctx.paths.state_dir)
    if ctx.dry_run:
        stored_conf(store, name)
        print(f"would: copy {name} from {store.copy(name)} to {ctx.args.host or 'a slave'}",
              file=ctx.stderr)  # fmt: skip
        return 0
    pool = Pool(ctx.host)
    inventory = Inventory(inventory_path(ctx.paths.state_dir))
    try:
        with operation(f"vs-put {name}"):
            report = put_guest(
                pool,
                inventory,
                store,
                name,
                host=ctx.args.host,
                env=dict(ctx.env),
                progress=progress_line(ctx),
                say=lambda line: print(f"vs-put: {line}", file=ctx.stderr),
            )
        remote = pool.remote(report.host)
        inventory.record_host(report.host, remote.call("guests_facts"), remote.call("host_facts"))
    finally:
        inventory.close()
    fields = {
        "host": report.host,
        "vserver": name,
        "mb": round(report.bytes / (1 << 20), 1),
        "seconds": round(report.seconds, 2),
        "resumed": report.resumed or "",
    }
    for note in report.notes:
        print(f"vs-put: {name}: {note}", file=ctx.stderr)
    if ctx.json:
        ctx.emit_json(fields)
    else:
        ctx.emit_lines([":".join(str(v) for v in fields.values())])
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of vs-put: returns its exit status."""
    return run_command(build_parser(), handle, argv)
