"""vs-stats: host or guest statistics."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence

from vstools.cli.common import (
    Context,
    add_guest_selection,
    emit_record,
    new_parser,
    run_command,
)

DESCRIPTION = """\
Statistics of the host, or of one guest with --name, as key:value lines (--json: one object).
Figures come from the kernel (cgroup counters, /proc); nothing runs inside the guest."""


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("vs-stats", DESCRIPTION, mutating=False)
    add_guest_selection(parser, required=False, allow_all=False)
    return parser


def host_stats(ctx: Context) -> dict[str, object]:
    from vstools.gueststate import is_running
    from vstools.hostconfig import list_guests

    names = list_guests(ctx.paths)
    running = sum(1 for n in names if is_running(ctx.paths.guest_run_dir(n)))
    meminfo = _meminfo()
    with open("/proc/uptime") as handle:
        uptime = float(handle.read().split()[0])
    load = os.getloadavg()
    return {
        "host": ctx.hostname,
        "kernel": os.uname().release,
        "uptime_s": int(uptime),
        "cpus": len(os.sched_getaffinity(0)),
        "load": " ".join(f"{value:.2f}" for value in load),
        "memory_total_mb": meminfo.get("MemTotal", 0) // 1024,
        "memory_available_mb": meminfo.get("MemAvailable", 0) // 1024,
        "guests_defined": len(names),
        "guests_running": running,
    }


def guest_stats(ctx: Context, name: str) -> dict[str, object]:
    from vstools.cgroup import Cgroup, probe_layout
    from vstools.gueststate import read_state
    from vstools.hostconfig import load_guest
    from vstools.limits import measure

    conf = load_guest(ctx.paths, name).conf
    state = read_state(ctx.paths.guest_run_dir(name))
    usage = measure(ctx.paths, conf, state)
    frozen = state is not None and Cgroup(probe_layout(), state.cgroup).is_frozen()
    return {
        "host": ctx.hostname,
        "vserver": name,
        "context": conf.context,
        "userns": _userns_range(conf.context) if conf.userns else "no",
        "ip": str(conf.ip),
        "enabled": "yes" if conf.enabled else "no",
        "state": "frozen" if frozen else ("running" if state else "stopped"),
        "init_pid": state.init_pid if state else None,
        "uptime_s": int(time.time() - state.started_at) if state else 0,
        "processes": usage.processes,
        "rss_used_mb": round(usage.rss_mb, 1),
        "rss_limit_mb": conf.rss_limit_mb,
        "rss_hits": usage.rss_hits,
        "oom_kills": usage.oom_kills,
        "proc_limit": conf.proc_limit,
        "proc_hits": usage.proc_hits,
        "cpu_used_s": round(usage.cpu_s, 2),
        "cpu_limit": str(conf.cpu_limit),
        "tmpfs_used_mb": round(usage.tmpfs_mb, 1),
        "tmpfs_limit_mb": conf.tmpfs_limit_mb,
        "disk_used_mb": round(usage.disk_mb, 1),
        "disk_limit_mb": conf.disk_limit_mb,
    }


def _userns_range(context: int) -> str:
    from vstools.config.guest import USERNS_SIZE, userns_base

    base = userns_base(context)
    return f"{base}-{base + USERNS_SIZE - 1}"


def _meminfo() -> dict[str, int]:
    values = {}
    with open("/proc/meminfo") as handle:
        for line in handle:
            key, _, rest = line.partition(":")
            values[key] = int(rest.split()[0])
    return values


def handle(ctx: Context) -> int:
    stats = guest_stats(ctx, ctx.args.name) if ctx.args.name else host_stats(ctx)
    emit_record(ctx, stats)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), handle, argv)
