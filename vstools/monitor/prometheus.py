"""The Prometheus textfile of vs-monitor: ``vs_tools.prom`` for node_exporter's textfile
collector, with every figure the Munin plugin graphs, labelled by host and guest, plus the
limits, the limit hits, the open alerts and each guest's state.

Like the Munin plugin it reads what the monitors save in ``STATE_DIR/monitor/guests/NAME.json``,
so one file covers every guest of the host, whichever daemon (vs-monitor.service or a
vs-monitor@NAME) watches it. The file is replaced atomically (a temporary name that does not end
in ``.prom``, then a rename), so node_exporter never reads half of it. The format is the text
exposition format 0.0.4: a ``# HELP`` and a ``# TYPE`` line per metric family, then its samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vstools.host.fsutil import atomic_write
from vstools.monitor.munin import MB, fresh_figures, read_states

TEXTFILE_NAME = "vs_tools.prom"
STATES = ("running", "stopped", "unknown")  # unknown: no fresh figures (no monitor running)


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family: its name, type, help text and the value it takes from a running
    guest's figures (None: no sample, e.g. a limit that is not set)."""

    name: str
    kind: str  # "gauge" or "counter"
    help: str
    value: Callable[[Mapping[str, Any]], float | None]


def _limit(value: float, scale: float = 1.0) -> float | None:
    return float(value) * scale if value and float(value) > 0 else None


FAMILIES: tuple[Family, ...] = (
    Family(
        "vs_guest_memory_bytes",
        "gauge",
        "Memory charged to the guest's cgroup (Munin vs_rss).",
        lambda f: float(f["rss_mb"]) * MB,
    ),
    Family(
        "vs_guest_memory_limit_bytes",
        "gauge",
        "The guest's memory limit (rss).",
        lambda f: _limit(f.get("rss_limit_mb", 0), MB),
    ),
    Family(
        "vs_guest_processes",
        "gauge",
        "Processes and threads in the guest's cgroup (Munin vs_proc).",
        lambda f: float(f["processes"]),
    ),
    Family(
        "vs_guest_processes_limit",
        "gauge",
        "The guest's process limit (proc).",
        lambda f: _limit(f.get("proc_limit", 0)),
    ),
    Family(
        "vs_guest_cpu_seconds_total",
        "counter",
        "CPU time used by the guest's cgroup (Munin vs_cpu).",
        lambda f: float(f["cpu_s"]),
    ),
    Family(
        "vs_guest_disk_bytes",
        "gauge",
        "Space used by the guest's root filesystem, measured every 5 minutes (Munin vs_disk).",
        lambda f: float(f["disk_mb"]) * MB,
    ),
    Family(
        "vs_guest_disk_limit_bytes",
        "gauge",
        "The guest's disk limit.",
        lambda f: _limit(f.get("disk_limit_mb", 0), MB),
    ),
    Family(
        "vs_guest_tmpfs_bytes",
        "gauge",
        "Space used on the guest's /tmp (Munin vs_tmpfs).",
        lambda f: float(f["tmpfs_mb"]) * MB,
    ),
    Family(
        "vs_guest_tmpfs_limit_bytes",
        "gauge",
        "The size of the guest's /tmp.",
        lambda f: _limit(f.get("tmpfs_limit_mb", 0), MB),
    ),
    Family(
        "vs_guest_load1",
        "gauge",
        "1-minute load average of the guest's own tasks.",
        lambda f: float(f["load"][0]),
    ),
    Family(
        "vs_guest_load5",
        "gauge",
        "5-minute load average of the guest's own tasks (Munin vs_load).",
        lambda f: float(f["load"][1]),
    ),
    Family(
        "vs_guest_load15",
        "gauge",
        "15-minute load average of the guest's own tasks.",
        lambda f: float(f["load"][2]),
    ),
    Family(
        "vs_guest_memory_limit_hits_total",
        "counter",
        "Times the guest's cgroup hit its memory limit (since the guest started).",
        lambda f: float(f.get("rss_hits", 0)),
    ),
    Family(
        "vs_guest_oom_kills_total",
        "counter",
        "Processes of the guest killed by the OOM killer (since the guest started).",
        lambda f: float(f.get("oom_kills", 0)),
    ),
    Family(
        "vs_guest_process_limit_hits_total",
        "counter",
        "Forks refused by the guest's process limit (since the guest started).",
        lambda f: float(f.get("proc_hits", 0)),
    ),
)


def escape_label(value: str) -> str:
    """A label value as the exposition format quotes it: backslash, double quote, newline."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{escape_label(v)}"' for k, v in labels.items()) + "}"


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def guest_state(data: Mapping[str, Any], now: float) -> str:
    """running, stopped, or unknown when the figures are missing or stale (no monitor ran
    within three intervals or 15 minutes, as for Munin)."""
    figures = fresh_figures(data, now)
    if figures is None:
        return "unknown"
    return "running" if figures.get("running") else "stopped"


def render_textfile(guests: Mapping[str, Mapping[str, Any]], host: str, now: float) -> str:
    """The textfile for ``guests`` (name → the state file vs-monitor saves): the state of each
    guest, its open alerts, the time of its last check, and its figures while it runs."""
    rows = []
    for name in sorted(guests):
        data = guests[name]
        labels = {"host": str(data.get("host") or host), "guest": name}
        rows.append((name, labels, data, guest_state(data, now)))
    out: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: list[str]) -> None:
        """Add one family: HELP, TYPE and its samples together (the format wants them so);
        a family without samples is left out."""
        if samples:
            out.extend([f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples])

    family(
        "vs_guest_state",
        "gauge",
        "1 for the guest's state: running, stopped, or unknown (no fresh figures).",
        [
            f"vs_guest_state{_labels(**labels, state=state)} {int(state == current)}"
            for _, labels, _, current in rows
            for state in STATES
        ],
    )
    family(
        "vs_guest_last_check_timestamp_seconds",
        "gauge",
        "When vs-monitor last checked the guest (Unix time).",
        [
            f"vs_guest_last_check_timestamp_seconds{_labels(**labels)}"
            f" {_number(float(data['figures'].get('time', 0)))}"
            for _, labels, data, _ in rows
            if isinstance(data.get("figures"), dict)
        ],
    )
    family(
        "vs_guest_alert",
        "gauge",
        "1 for each open alert of the guest (the reason of its mail).",
        [
            f"vs_guest_alert{_labels(**labels, alert=str(kind))} 1"
            for _, labels, data, _ in rows
            for kind in sorted(data.get("alerts") or {})
        ],
    )
    for fam in FAMILIES:
        samples = []
        for _, labels, data, state in rows:
            if state != "running":
                continue  # Munin's "U": no figure for a stopped guest or stale figures
            try:
                value = fam.value(data["figures"])
            except (KeyError, IndexError, TypeError, ValueError):
                continue
            if value is not None:
                samples.append(f"{fam.name}{_labels(**labels)} {_number(value)}")
        family(fam.name, fam.kind, fam.help, samples)
    return "\n".join(out) + "\n" if out else ""


def write_textfile(directory: Path, text: str) -> Path:
    """Replace ``directory/vs_tools.prom`` with ``text`` atomically (world-readable)."""
    target = directory / TEXTFILE_NAME
    atomic_write(target, text, mode=0o644, durable=False)
    return target


def export_textfile(
    figures_dir: Path, textfile_dir: Path | None, host: str, now: float
) -> Path | None:
    """Write the textfile of every guest saved in ``figures_dir`` into ``textfile_dir``; None
    (nothing written) when it is not set or does not exist: node_exporter's collector
    directory belongs to its package, it is never created here."""
    if textfile_dir is None or not textfile_dir.is_dir():
        return None
    return write_textfile(textfile_dir, render_textfile(read_states(figures_dir), host, now))
