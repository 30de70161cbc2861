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
from vstools.config.guest import USERNS_SIZE, userns_base
from vstools.guest.facts import meminfo
from vstools.guest.limits import drift, enforced_limits, measure, read_enforced
from vstools.host.cgroup import Cgroup
from vstools.host.cgrouplayout import host_cpu_count, probe_layout
from vstools.runtime.state import is_running, read_state

DESCRIPTION = """\
Statistics of the host, or of one guest with --name, as key:value lines (--json: one object).
Figures come from the kernel (cgroup counters, /proc); nothing runs inside the guest."""


def build_parser() -> argparse.ArgumentParser:
    """The parser of vs-stats: --name for one guest's figures, none for the host's."""
    parser = new_parser("vs-stats", DESCRIPTION, mutating=False)
    add_guest_selection(parser, required=False, allow_all=False)
    return parser


def host_stats(ctx: Context) -> dict[str, object]:
    """The host's figures: kernel, uptime, CPUs, load, memory (MB) and how many guests are
    defined and running."""
    names = ctx.host.guest_names()
    running = sum(1 for n in names if is_running(ctx.paths.guest_run_dir(n)))
    memory = meminfo()
    with open("/proc/uptime") as handle:
        uptime = float(handle.read().split()[0])
    load = os.getloadavg()
    return {
        "host": ctx.hostname,
        "kernel": os.uname().release,
        "uptime_s": int(uptime),
        "cpus": len(os.sched_getaffinity(0)),
        "load": " ".join(f"{value:.2f}" for value in load),
        "memory_total_mb": memory.get("MemTotal", 0) // 1024,
        "memory_available_mb": memory.get("MemAvailable", 0) // 1024,
        "guests_defined": len(names),
        "guests_running": running,
    }


def guest_stats(ctx: Context, name: str) -> dict[str, object]:
    """One guest's figures; a running guest's limits as the kernel enforces them."""
    conf = ctx.host.guest(name).conf
    state = read_state(ctx.paths.guest_run_dir(name))
    usage = measure(ctx.host, conf, state)
    frozen = state is not None and Cgroup(probe_layout(), state.cgroup).is_frozen()
    limits = enforced_limits(conf, None, host_cpu_count())  # guest.conf's, for a stopped guest
    if state is not None:
        enforced = read_enforced(state)
        cpus = host_cpu_count()
        limits = enforced_limits(conf, enforced, cpus)
        drifted = drift(conf, enforced, cpus)
        if drifted:
            print(
                f"vs-stats: {name}: warning: the kernel enforces {', '.join(drifted)}",
                file=ctx.stderr,
            )
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
        "rss_limit_mb": limits["rss"],
        "rss_hits": usage.rss_hits,
        "oom_kills": usage.oom_kills,
        "proc_limit": limits["proc"],
        "proc_hits": usage.proc_hits,
        "cpu_used_s": round(usage.cpu_s, 2),
        "cpu_limit": limits["cpu"],
        "tmpfs_used_mb": round(usage.tmpfs_mb, 1),
        "tmpfs_limit_mb": limits["tmpfs"],
        "disk_used_mb": round(usage.disk_mb, 1),
        "disk_limit_mb": conf.disk_limit_mb,
    }


def _userns_range(context: int) -> str:
    base = userns_base(context)
    return f"{base}-{base + USERNS_SIZE - 1}"


def handle(ctx: Context) -> int:
    """Run vs-stats: the host's statistics, or one guest's with --name, as one record."""
    stats = guest_stats(ctx, ctx.args.name) if ctx.args.name else host_stats(ctx)
    emit_record(ctx, stats)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of vs-stats: returns its exit status."""
    return run_command(build_parser(), handle, argv)
