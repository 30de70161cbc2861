"""vs-scan's work: ask every slave (at once, bounded) what it holds, refresh the inventory, and
find what the pool must never have twice: a guest name, an address or a context number on two
hosts, and above all a guest running on two hosts."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vstools.host.ssh import Remote
from vstools.pool.inventory import GuestRow, Inventory
from vstools.pool.slaves import Answer, Pool


@dataclass(frozen=True, slots=True)
class Scan:
    """What a scan found: the guests of the slaves that answered, the slaves that did not (and
    why), and the conflicts across the whole pool (unanswered slaves as last seen)."""

    rows: list[GuestRow]
    unreachable: list[tuple[str, str]] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)


def ask(remote: Remote) -> dict[str, Any]:
    """One slave's report: its facts and its guests, in one SSH round trip."""
    report: dict[str, Any] = remote.call("scan_report")
    return report


def scan(pool: Pool, inventory: Inventory, hosts: Sequence[str] | None = None) -> Scan:
    """Ask the slaves (all, or ``hosts``), record their answers, and report."""
    answers: list[Answer[dict[str, Any]]] = pool.fan_out(ask, hosts)
    unreachable = []
    answered = []
    for answer in answers:
        if answer.error is not None or answer.value is None:
            reason = str(answer.error or "no answer")
            inventory.record_unreachable(answer.host, reason)
            unreachable.append((answer.host, reason))
        else:
            inventory.record_host(answer.host, answer.value["guests"], answer.value["host"])
            answered.append(answer.host)
    rows = [row for host in answered for row in inventory.guests(host=host)]
    known = {slave.host for slave in pool.slaves}
    everything = [row for row in inventory.guests() if row.host in known]
    return Scan(rows, unreachable, find_conflicts(everything))


def find_conflicts(rows: Sequence[GuestRow]) -> list[str]:
    """Everything the pool holds twice, one sentence each (pure)."""
    found = []
    by_name: dict[str, list[GuestRow]] = defaultdict(list)
    by_ip: dict[str, list[GuestRow]] = defaultdict(list)
    by_context: dict[int, list[GuestRow]] = defaultdict(list)
    for row in rows:
        by_name[row.name].append(row)
        if row.ip:
            by_ip[row.ip].append(row)
        if row.context is not None:
            by_context[row.context].append(row)
    for name, same in sorted(by_name.items()):
        running = [r.host for r in same if r.running]
        if len(running) > 1:
            found.append(f"guest {name} runs on {_hosts(running)}")
        elif len({r.host for r in same}) > 1:
            found.append(f"guest {name} is defined on {_hosts([r.host for r in same])}")
    for key, groups, what in (
        ("address", by_ip, "is the address of"),
        ("context", by_context, "is the context number of"),
    ):
        for value, same in sorted(groups.items(), key=lambda item: str(item[0])):
            if len({r.host for r in same}) > 1 and len({r.name for r in same}) > 1:
                owners = ", ".join(f"{r.name} on {r.host}" for r in same)
                found.append(f"{key} {value} {what} {owners}")
    return found


def _hosts(hosts: Sequence[str]) -> str:
    ordered = sorted(set(hosts))
    return ", ".join(ordered[:-1]) + f" and {ordered[-1]}" if len(ordered) > 1 else ordered[0]
