#!/usr/bin/python3
# Munin's magic markers (munin-node-configure reads them as they are):
# fmt: off
#%# family=auto
#%# capabilities=autoconf suggest
# fmt: on
"""The Munin plugin ``vs_``: a wildcard plugin linked as ``vs_rss``, ``vs_proc``, ``vs_cpu``,
``vs_disk``, ``vs_tmpfs`` or ``vs_load``, one line per guest. It reads the figures vs-monitor
saves in ``STATE_DIR/monitor/guests/NAME.json`` (world-readable), so it needs no root and
touches no cgroup. Munin calls it with ``config``, ``autoconf``, ``suggest`` or nothing
(fetch).

Munin runs plugins as ``nobody``, who may not reach the toolkit's installation (a checkout in
root's home, say): so this file uses the standard library only, and ``vs-setup`` installs a
copy of it, run by the system's python3, in a directory anyone can read. STATE_DIR comes from
the environment (``env.VS_STATE_DIR`` in plugin-conf.d, which vs-setup writes), default
/var/lib/vs-tools."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

MB = 1 << 20
STALE_S = 900.0  # figures older than this (or three intervals) are unknown: monitor not running


@dataclass(frozen=True, slots=True)
class Graph:
    """One graph of the wildcard plugin: its title, axis label, help text and the value it takes
    from a guest's figures (``derive``: a counter; ``bytes``: a base-1024 axis)."""

    title: str
    vlabel: str
    info: str
    value: Callable[[Mapping[str, Any]], float]
    derive: bool = False
    bytes: bool = False


GRAPHS: dict[str, Graph] = {
    "rss": Graph(
        "Memory of the guests",
        "bytes",
        "Memory charged to each guest's cgroup.",
        lambda f: float(f["rss_mb"]) * MB,
        bytes=True,
    ),
    "proc": Graph(
        "Processes of the guests",
        "processes",
        "Processes and threads in each guest's cgroup.",
        lambda f: float(f["processes"]),
    ),
    "cpu": Graph(
        "CPU of the guests",
        "% of one CPU",
        "CPU time used by each guest, in percent of one CPU.",
        # A DERIVE of hundredths of a CPU second is a rate in percent of one CPU.
        lambda f: round(float(f["cpu_s"]) * 100),
        derive=True,
    ),
    "disk": Graph(
        "Disk use of the guests",
        "bytes",
        "Space used by each guest's root filesystem (measured every 5 minutes).",
        lambda f: float(f["disk_mb"]) * MB,
        bytes=True,
    ),
    "tmpfs": Graph(
        "/tmp use of the guests",
        "bytes",
        "Space used on each guest's /tmp (a tmpfs).",
        lambda f: float(f["tmpfs_mb"]) * MB,
        bytes=True,
    ),
    "load": Graph(
        "Load average of the guests",
        "load (5 min)",
        "5-minute load average of each guest's own tasks, computed by vs-monitor.",
        lambda f: float(f["load"][1]),
    ),
}


def field_name(guest: str) -> str:
    """A Munin field name: letters, digits and _ only (guest names may hold '-')."""
    return guest.replace("-", "_")


def read_states(directory: Path) -> dict[str, dict[str, Any]]:
    """Every guest's saved monitor state in ``directory`` by guest name (unreadable files are
    skipped): what this plugin and the Prometheus textfile are made from."""
    found: dict[str, dict[str, Any]] = {}
    try:
        files = sorted(directory.glob("*.json"))
    except OSError:
        return found
    for path in files:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            found[str(data.get("guest") or path.stem)] = data
    return found


def fresh_figures(data: Mapping[str, Any], now: float) -> dict[str, Any] | None:
    """A saved state's figures, None when there are none or they are stale (older than three
    of the guest's intervals, 15 minutes at least: no monitor is running)."""
    figures = data.get("figures")
    if not isinstance(figures, dict):
        return None
    stale_s = max(STALE_S, 3 * float(data.get("pooling_s", 60)))
    return figures if now - float(figures.get("time", 0)) < stale_s else None


def read_figures(directory: Path, now: float) -> dict[str, dict[str, Any] | None]:
    """Each guest's latest figures, None where they are stale or the guest is stopped."""
    found: dict[str, dict[str, Any] | None] = {}
    for name, data in read_states(directory).items():
        figures = fresh_figures(data, now)
        found[name] = figures if figures is not None and figures.get("running") else None
    return found


def render_config(graph_name: str, guests: Sequence[str]) -> str:
    """The ``config`` answer for ``graph_name``: the graph's attributes and a field per guest."""
    graph = GRAPHS[graph_name]
    lines = [
        f"graph_title {graph.title}",
        f"graph_vlabel {graph.vlabel}",
        "graph_category virtualization",
        f"graph_info {graph.info}",
        "graph_args --base 1024 -l 0" if graph.bytes else "graph_args -l 0",
    ]
    for guest in guests:
        name = field_name(guest)
        lines += [f"{name}.label {guest}", f"{name}.min 0"]
        if graph.derive:
            lines.append(f"{name}.type DERIVE")
    return "\n".join(lines) + "\n"


def render_values(graph_name: str, figures: Mapping[str, Mapping[str, Any] | None]) -> str:
    """The fetch answer: a value line per guest, ``U`` (unknown) where its figures are None."""
    graph = GRAPHS[graph_name]
    lines = []
    for guest, figs in sorted(figures.items()):
        value = "U" if figs is None else _number(graph.value(figs))
        lines.append(f"{field_name(guest)}.value {value}")
    return "\n".join(lines) + ("\n" if lines else "")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.4f}"


DEFAULT_STATE_DIR = "/var/lib/vs-tools"


def figures_dir(environ: Mapping[str, str]) -> Path:
    """Where vs-monitor saves each guest's figures: STATE_DIR/monitor/guests."""
    return Path(environ.get("VS_STATE_DIR") or DEFAULT_STATE_DIR) / "monitor" / "guests"


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """``vs_GRAPH [config|autoconf|suggest]``; the first argument is the name linked as."""
    args = list(sys.argv if argv is None else argv)
    stream = out or sys.stdout
    plugin = os.path.basename(args.pop(0)) if args else "vs_"
    command = args[0] if args else "fetch"
    directory = figures_dir(os.environ)
    figures = read_figures(directory, time.time())
    if command == "autoconf":
        stream.write("yes\n" if figures else f"no (no figures in {directory}: run vs-monitor)\n")
        return 0
    if command == "suggest":
        if figures:
            stream.write("".join(f"{name}\n" for name in GRAPHS))
        return 0
    graph_name = plugin.removeprefix("vs_")
    if graph_name not in GRAPHS:
        print(
            f"{plugin}: link this plugin as vs_GRAPH, GRAPH one of {', '.join(GRAPHS)}",
            file=sys.stderr,
        )
        return 1
    if command == "config":
        stream.write(render_config(graph_name, sorted(figures)))
        return 0
    if command != "fetch":
        print(f"{plugin}: unknown command {command!r}", file=sys.stderr)
        return 1
    stream.write(render_values(graph_name, figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
