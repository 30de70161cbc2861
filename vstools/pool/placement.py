"""Which slave a guest goes to when none is named (vs-put, vs-move): among the selectable slaves
(``noselect`` honoured) that can hold it (room for its files and its memory limit, its network,
its name, address and context free there), the one with the most free memory, then disk; and
why, in one line."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from vstools.config.guest import GuestConf
from vstools.errors import StateError
from vstools.host.ssh import Remote
from vstools.pool.slaves import Pool

GIB = 1024  # MB


@dataclass(frozen=True, slots=True)
class Need:
    """What a guest needs of the slave it goes to: its name, address and context free there,
    memory for its limit, and room for its disk (on lvm, a volume of its disk limit)."""

    name: str
    ip: str
    context: int
    rss_limit_mb: int
    disk_limit_mb: int = 0

    @classmethod
    def of_conf(cls, conf: GuestConf) -> Need:
        """The needs of a guest.conf."""
        return cls(conf.name, str(conf.ip), conf.context, conf.rss_limit_mb, conf.disk_limit_mb)

    @classmethod
    def of_facts(cls, facts: dict[str, Any]) -> Need:
        """The needs of a guest as a slave describes it (guest_facts)."""
        return cls(facts["name"], facts["ip"], int(facts["context"]), int(facts["rss_limit_mb"]),
                   int(facts.get("disk_limit_mb") or 0))  # fmt: skip


@dataclass(frozen=True, slots=True)
class Choice:
    """The slave chosen and why."""

    host: str
    reason: str


def _gib(mb: float) -> str:
    return f"{mb / GIB:.1f} GiB"


def room_needed_mb(size_mb: int) -> int:
    """The free space a guest of ``size_mb`` needs where it arrives: its size, a tenth more for
    what the file system adds, and a margin."""
    return size_mb + size_mb // 10 + 16


def room_on(facts: dict[str, Any], conf: Need, size_mb: int) -> int:
    """The room a guest of ``size_mb`` takes on a slave (its host facts): on lvm a volume of
    its disk limit, taken from the volume group whatever the files need; elsewhere what
    room_needed_mb says."""
    if facts.get("storage") == "lvm" and conf.disk_limit_mb:
        return conf.disk_limit_mb
    return room_needed_mb(size_mb)


def unfit(report: dict[str, Any], conf: Need, size_mb: int, *, memory: bool = True) -> str | None:
    """Why a slave (its scan report) cannot take the guest, or None when it can (pure).
    ``memory``: also when its free memory is below the guest's limit (placement's test; a
    slave named by the administrator takes a stopped guest whatever its memory)."""
    facts = report["host"]
    for guest in report["guests"]:
        if guest["name"] == conf.name:
            return f"has a guest {conf.name}"
        if guest.get("ip") == str(conf.ip):
            return f"has {conf.ip} ({guest['name']})"
        if guest.get("context") == conf.context:
            return f"has context {conf.context} ({guest['name']})"
    networks = facts.get("networks") or []
    address = IPv4Address(str(conf.ip))
    if networks and not any(address in IPv4Network(n.split(",", 1)[1]) for n in networks):
        return f"has no network for {conf.ip}"
    needed = room_on(facts, conf, size_mb)
    if facts["disk_free_mb"] < needed:
        return f"has {_gib(facts['disk_free_mb'])} disk free, {_gib(needed)} needed"
    if memory and facts["mem_available_mb"] < conf.rss_limit_mb:
        return f"has {_gib(facts['mem_available_mb'])} memory free"
    return None


def rank(
    reports: dict[str, dict[str, Any]], noselect: set[str], conf: Need, size_mb: int
) -> Choice:
    """The best slave among ``reports`` (pure: placement's arithmetic, unit-tested)."""
    fit: list[tuple[str, dict[str, Any]]] = []
    excluded = []
    for host, report in reports.items():
        why = "is noselect" if host in noselect else unfit(report, conf, size_mb)
        if why is None:
            fit.append((host, report["host"]))
        else:
            excluded.append(f"{host} {why}")
    if not fit:
        raise StateError(
            f"no slave can take guest {conf.name}: " + ("; ".join(excluded) or "no slave")
        )
    fit.sort(key=lambda item: (item[1]["mem_available_mb"], item[1]["disk_free_mb"]),
             reverse=True)  # fmt: skip
    host, best = fit[0]
    reason = f"{host} (free {_gib(best['mem_available_mb'])} mem, {_gib(best['disk_free_mb'])} disk"
    others = [f"{h} has {_gib(f['mem_available_mb'])}" for h, f in fit[1:]]
    details = [*others, *excluded]
    return Choice(host, reason + ("; " + "; ".join(details) if details else "") + ")")


def choose(pool: Pool, conf: Need, size_mb: int, *, exclude: Collection[str] = ()) -> Choice:
    """Ask every slave (but those of ``exclude``: a move's source) for its report and rank
    them."""

    def ask(remote: Remote) -> dict[str, Any]:
        """The slave's scan report."""
        report: dict[str, Any] = remote.call("scan_report")
        return report

    names = [slave.host for slave in pool.slaves if slave.host not in exclude]
    if not names:
        raise StateError(f"no slave can take guest {conf.name}: no other slave")
    reports = {a.host: a.value for a in pool.fan_out(ask, names) if a.value is not None}
    noselect = {s.host for s in pool.slaves if s.noselect}
    return rank(reports, noselect, conf, size_mb)
