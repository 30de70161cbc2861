"""monitor.conf: what the host watches in one guest and whom it tells."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from vstools.config.keyvalue import Field, KeyValueFile, meta_fields
from vstools.config.values import (
    parse_bool,
    parse_decimal,
    parse_mail_list,
    parse_regex,
    parse_uint,
)
from vstools.errors import Problem


def percent(text: str) -> int:
    """A threshold in percent of the limit; 0 turns the check off."""
    return parse_uint(text, maximum=100, what="percentage")


def seconds(text: str) -> int:
    """A number of seconds, at least 1."""
    return parse_uint(text, minimum=1, what="number of seconds")


def load(text: str) -> float:
    """A load average threshold: a non-negative decimal such as ``2`` or ``1.5``."""
    return parse_decimal(text, what="load average")


def _repeat(text: str) -> int:
    return parse_uint(text, what="number of seconds")


_PATH, _LINES, _PROBLEMS = meta_fields()


@dataclass(frozen=True, kw_only=True)
class MonitorConf(KeyValueFile):
    """monitor.conf's model: what is checked in one guest, its thresholds, and who is told."""

    FILE_NAME: ClassVar[str] = "monitor.conf"

    mailto: tuple[str, ...] = ("root",)
    pooling_s: int = 60
    rss_threshold_pct: int = 90
    disk_threshold_pct: int = 90
    tmpfs_threshold_pct: int = 90
    proc_threshold_pct: int = 90
    loadavg_1_threshold: float | None = None
    loadavg_5_threshold: float | None = None
    loadavg_15_threshold: float | None = None
    rss_hits: bool = True
    proc_hits: bool = True
    sockets: bool = True
    sockets_filter: str | None = None
    repeat_s: int = 3600
    hysteresis_pct: int = 5
    path: str = _PATH
    key_lines: tuple[tuple[str, int, int], ...] = _LINES
    warnings: tuple[Problem, ...] = _PROBLEMS

    SCHEMA: ClassVar[tuple[Field, ...]] = (
        Field("MONITOR_MAILTO", "mailto", parse_mail_list, doc="who gets the alerts"),
        Field("MONITOR_POOLING", "pooling_s", seconds, doc="seconds between two checks"),
        Field("RSS_THRESHOLD", "rss_threshold_pct", percent),
        Field("DISK_THRESHOLD", "disk_threshold_pct", percent),
        Field("TMPFS_THRESHOLD", "tmpfs_threshold_pct", percent),
        Field("PROC_THRESHOLD", "proc_threshold_pct", percent),
        Field("LOADAVG_1_THRESHOLD", "loadavg_1_threshold", load),
        Field("LOADAVG_5_THRESHOLD", "loadavg_5_threshold", load),
        Field("LOADAVG_15_THRESHOLD", "loadavg_15_threshold", load),
        Field("MONITOR_RSS_HITS", "rss_hits", parse_bool),
        Field("MONITOR_PROC_HITS", "proc_hits", parse_bool),
        Field("MONITOR_SOCKETS", "sockets", parse_bool),
        Field("SOCKETS_FILTER", "sockets_filter", parse_regex),
        Field("MONITOR_REPEAT", "repeat_s", _repeat, doc="seconds between reminders, 0: never"),
        Field(
            "MONITOR_HYSTERESIS",
            "hysteresis_pct",
            percent,
            doc="a threshold alert ends only this many points below the threshold",
        ),
    )
