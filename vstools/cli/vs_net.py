"""vs-net: show or change a guest's uplink, routes and firewall."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from vstools.cli.common import (
    Context,
    add_guest_selection,
    confirm,
    for_each_guest,
    guests_phrase,
    new_parser,
    run_command,
    selected_guests,
)
from vstools.firewall.host import Firewall
from vstools.guest.netctl import GuestNet
from vstools.host.journal import operation

DESCRIPTION = """\
Show or change the three network layers of guests: vlan (uplink interface), route (policy
rule, table, host route, proxy ARP) and fw (the guest's IN and OUT chains). Changes go up in
the order vlan, route, fw and down in the order fw, route, vlan; an uplink or a network's rule
still used by another running guest is kept. --all with a layer down asks for confirmation
first when stdin is a terminal (not with --yes); any answer but y/yes exits 7 and changes
nothing.
Output: host:vserver:ip:vlan:route:fwIN:fwOUT, each layer up, down, off (firewall.conf has no
'enable') or - (no network of networks.conf holds the guest's address)."""

FIELDS = ("host", "vserver", "ip", "vlan", "route", "fwIN", "fwOUT")


def build_parser() -> argparse.ArgumentParser:
    """The parser of vs-net: the guest selection, --vlan, --route, --fw (up or down) and --plan."""
    parser = new_parser("vs-net", DESCRIPTION, mutating=True)
    add_guest_selection(parser)
    for layer in ("vlan", "route", "fw"):
        parser.add_argument(
            f"--{layer}", choices=("up", "down"), help=f"bring the {layer} layer up or down"
        )
    parser.add_argument(
        "--plan",
        action="store_true",
        help="print the compiled firewall and its diff with what is loaded",
    )
    return parser


def _plan(ctx: Context, names: list[str]) -> int:
    guests = [GuestNet(ctx.host, name) for name in names]
    chosen = (
        [g.rules() for g in guests if g.plan is not None and g.running] if ctx.args.name else []
    )
    text, diff, full = Firewall(ctx.host).plan(chosen)
    resolved = {
        f"{guest.name}: {name}": [str(ip) for ip in ips]
        for guest in full.guests
        for name, ips in guest.resolved
    }
    if ctx.json:
        ctx.emit_json({"load": text, "diff": diff, "resolved": resolved})
        return 0
    for key, ips in resolved.items():
        print(f"# {key} resolves to {', '.join(ips)}", file=ctx.stdout)
    print(text, end="", file=ctx.stdout)
    print("# difference with what is loaded:", file=ctx.stdout)
    print(diff or "# (none: what is loaded is what would be loaded)", end="\n", file=ctx.stdout)
    return 0


def handle(ctx: Context) -> int:
    """Run vs-net: with --plan print the compiled firewall; otherwise take the layers asked down
    (fw, route, vlan) then up (vlan, route, fw) on each guest and print its row. Returns the
    worst failure's exit code."""
    args = ctx.args
    names = selected_guests(ctx)
    if args.plan:
        return _plan(ctx, names)
    changes = [(layer, getattr(args, layer)) for layer in ("vlan", "route", "fw")]
    ups = [(layer, "up") for layer, state in changes if state == "up"]
    downs = [(layer, "down") for layer, state in reversed(changes) if state == "down"]
    if args.all and downs and names:
        layers = ", ".join(f"--{layer} down" for layer, _ in downs)
        confirm(ctx, f"Take {layers} for {guests_phrase(names)}?")
    firewall = Firewall(ctx.host)  # one reading of the loaded rules for all rows
    if args.all and args.fw == "up" and not ctx.dry_run:
        # One transaction for every running guest rather than one per guest.
        with operation("vs-net --all --fw up"):
            _, problems = firewall.load_all()
        for problem in problems:
            print(f"vs-net: {problem} (loaded closed)", file=ctx.stderr)
        ups = [change for change in ups if change[0] != "fw"]

    def one(name: str) -> dict[str, object]:
        """Change one guest's layers (with --all only the vlan of a guest stopped or in no network),
        then its row."""
        guest = GuestNet(ctx.host, name, firewall)
        if args.fw == "up" and not ctx.dry_run:
            from vstools.pkg.session import clean_dead_run  # vs-pkg's imports, only here

            for line in clean_dead_run(ctx.host, name):  # the mirrors a killed vs-pkg opened
                print(f"vs-net: {name}: leftover of a killed vs-pkg removed: {line}",
                      file=ctx.stderr)  # fmt: skip
        for layer, state in [*downs, *ups]:
            if args.all and (guest.plan is None or not guest.running) and layer != "vlan":
                continue
            if ctx.dry_run:
                print(f"would: {name}: {layer} {state}", file=ctx.stderr)
                continue
            with operation(f"vs-net {name} --{layer} {state}"):
                print(f"vs-net: {getattr(guest, layer)(state)}", file=ctx.stderr)
        row = guest.row()
        return {
            "host": ctx.hostname,
            "vserver": row.vserver,
            "ip": row.ip,
            "vlan": row.vlan,
            "route": row.route,
            "fwIN": row.fw_in,
            "fwOUT": row.fw_out,
        }

    ctx.emit_rows(for_each_guest(ctx, names, one), FIELDS)
    return ctx.exit_code()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of vs-net: returns its exit status."""
    return run_command(build_parser(), handle, argv)
