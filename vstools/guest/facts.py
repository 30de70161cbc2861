"""What a host says about itself and its guests: the slave's side of the pool (the master calls
these through ``vs-fonctions --json`` over SSH, DESIGN §10) and what vs-scan records in the
master's inventory. Read-only: nothing here changes the host."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vstools import __version__
from vstools.config.values import StorageKind
from vstools.errors import VSError
from vstools.guest.lifecycle import guest_status
from vstools.guest.limits import disk_used_bytes
from vstools.guest.receive import receiving_storage
from vstools.host.hostconfig import HostConfig

MB = 1 << 20


def hostname(host: HostConfig) -> str:
    """The host's name as the toolkit prints it (HOSTNAME of vs-tools.conf, else the kernel's)."""
    return host.hostname()


def guest_facts(host: HostConfig, name: str) -> dict[str, Any]:
    """One guest as the pool sees it: state, address, network, context, storage, size. A guest
    whose files do not parse is reported with its problem, never left out."""
    status = guest_status(host, name, lenient=True)
    facts: dict[str, Any] = {
        "name": name,
        "enabled": status.enabled,
        "running": status.running,
        "frozen": status.frozen,
        "orphaned": status.orphaned,
        "problem": status.problem,
    }
    try:
        conf = host.guest_conf(name)
    except VSError as exc:
        facts["problem"] = str(exc)
        return facts
    network = host.networks().network_for(conf.ip)
    facts |= {
        "ip": str(conf.ip),
        "vlan": network.vlan if network else None,
        "network": str(network.network) if network else None,
        "domain": conf.domain,
        "context": conf.context,
        "userns": conf.userns,
        "storage": str(conf.storage),
        "rss_limit_mb": conf.rss_limit_mb,
        "disk_limit_mb": conf.disk_limit_mb,
        "disk_used_mb": round(disk_used_bytes(host, conf) / MB, 1),
    }
    return facts


def guests_facts(host: HostConfig) -> list[dict[str, Any]]:
    """Every guest of the host, as ``guest_facts`` describes it."""
    return [guest_facts(host, name) for name in host.guest_names()]


def host_facts(host: HostConfig) -> dict[str, Any]:
    """The host as placement sees it: free memory and disk, its storage, its networks."""
    memory = meminfo()
    root = _existing(host.paths.root_dir)
    disk = os.statvfs(root)
    create = host.create()
    return {
        "host": hostname(host),
        "version": __version__,
        "cpus": len(os.sched_getaffinity(0)),
        "mem_total_mb": memory.get("MemTotal", 0) // 1024,
        "mem_available_mb": memory.get("MemAvailable", 0) // 1024,
        "disk_free_mb": _room_mb(host, disk),
        "disk_total_mb": disk.f_blocks * disk.f_frsize // MB,
        "storage": str(create.storage),
        "networks": [f"{n.vlan},{n.network}" for n in host.networks().networks],
        "root_dir": str(host.paths.root_dir),
        "guests": len(host.guest_names()),
    }


def _room_mb(host: HostConfig, disk: os.statvfs_result) -> int:
    """Room for guests arriving: free space where the roots live, or on lvm the volume
    group's (each root a volume taken from it; 0 when the group cannot be read)."""
    if host.create().storage is not StorageKind.LVM:
        return disk.f_bavail * disk.f_frsize // MB
    try:
        return receiving_storage(host).free_mb()
    except VSError:
        return 0


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def meminfo() -> dict[str, int]:
    """/proc/meminfo's figures, in KiB, by name."""
    values = {}
    with open("/proc/meminfo") as handle:
        for line in handle:
            key, _, rest = line.partition(":")
            values[key] = int(rest.split()[0])
    return values
