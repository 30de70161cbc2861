"""The monitor's alert logic, pure and clock-free: given what a check saw and the time, which
mails to send. Every condition of one guest is an incident with a start, reminders and an end:

- a *level* (memory, disk, /tmp, processes in percent of their limit; load averages; the guest
  being stopped) starts when its value reaches the threshold and ends only when it falls below
  a lower mark (the threshold minus MONITOR_HYSTERESIS), so a value flapping around the
  threshold gives one incident, not a mail per check;
- a *hit* counter (memory or process limit hits, from the kernel's fail counters) starts when
  the counter moves and ends after ``quiet_checks`` checks in a row without a new hit;
- an *event* (the listening sockets changed) is one mail, with no end.

While an incident lasts, a reminder goes out every MONITOR_REPEAT seconds (0: never).
The book of open incidents is plain data, saved between runs (state survives restarts)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

HITS_QUIET_CHECKS = 3  # checks without a new hit before a hits incident ends


class Phase(StrEnum):
    """Where a notice stands in its incident: start, reminder, end, or a one-off event."""

    START = "start"
    REPEAT = "repeat"
    END = "end"
    EVENT = "event"


# The word of an ended incident, where "<kind> ok" would read wrong.
_END_WORD = {"stopped": "running"}


@dataclass(frozen=True, slots=True)
class Notice:
    """One mail to send: which condition, at which phase, and what to say about it."""

    kind: str
    phase: Phase
    since: float
    detail: str

    @property
    def reason(self) -> str:
        """The last field of the subject ``host:vserver:reason``."""
        if self.phase is Phase.START:
            return self.kind
        if self.phase is Phase.REPEAT:
            return f"{self.kind} still"
        if self.phase is Phase.END:
            return _END_WORD.get(self.kind, f"{self.kind} ok")
        return f"{self.kind} changed"


@dataclass(frozen=True, slots=True)
class Level:
    """A value against a threshold: starts at ``value >= start_at``, ends at
    ``value < end_below`` (``end_below <= start_at``: the gap is the hysteresis)."""

    kind: str
    value: float
    start_at: float
    end_below: float
    detail: str


@dataclass(frozen=True, slots=True)
class Hits:
    """How many new hits a fail counter shows since the previous check."""

    kind: str
    new: int
    detail: str


@dataclass(frozen=True, slots=True)
class Event:
    """A one-off observation (the listening sockets changed): one mail, no incident."""

    kind: str
    detail: str


@dataclass(slots=True)
class Incident:
    """An open condition of one guest: since when, when it was last mailed, its latest detail."""

    kind: str
    since: float
    last_sent: float
    detail: str
    quiet: int = 0  # hits: checks in a row without a new hit


@dataclass(slots=True)
class AlertBook:
    """One guest's open incidents."""

    active: dict[str, Incident] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The open incidents as plain data by kind, for the guest's state file."""
        return {
            kind: {
                "since": i.since,
                "last_sent": i.last_sent,
                "detail": i.detail,
                "quiet": i.quiet,
            }
            for kind, i in self.active.items()
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AlertBook:
        """The book ``to_json`` saved; a missing detail is empty and a missing quiet count 0."""
        return cls(
            {
                kind: Incident(
                    kind,
                    float(v["since"]),
                    float(v["last_sent"]),
                    str(v.get("detail", "")),
                    int(v.get("quiet", 0)),
                )
                for kind, v in data.items()
            }
        )

    def close_all_but(self, keep: tuple[str, ...]) -> list[str]:
        """Drop every open incident but those of ``keep`` (a stopped guest uses no memory or
        processes); returns the kinds dropped, for the stop mail to name."""
        dropped = sorted(kind for kind in self.active if kind not in keep)
        for kind in dropped:
            del self.active[kind]
        return dropped


def evaluate(
    book: AlertBook,
    *,
    now: float,
    repeat_s: float,
    levels: Iterable[Level] = (),
    hits: Iterable[Hits] = (),
    events: Iterable[Event] = (),
    quiet_checks: int = HITS_QUIET_CHECKS,
) -> list[Notice]:
    """Update ``book`` with one check's observations and return the mails to send."""
    notices: list[Notice] = []

    def start(kind: str, detail: str) -> None:
        """Open an incident of ``kind`` now and mail its start."""
        book.active[kind] = Incident(kind, now, now, detail)
        notices.append(Notice(kind, Phase.START, now, detail))

    def ongoing(incident: Incident, detail: str) -> None:
        """Keep a lasting incident's latest detail; mail a reminder once ``repeat_s`` has passed
        since its last mail (never with 0)."""
        incident.detail = detail
        if repeat_s > 0 and now - incident.last_sent >= repeat_s:
            incident.last_sent = now
            notices.append(Notice(incident.kind, Phase.REPEAT, incident.since, detail))

    def end(incident: Incident, detail: str) -> None:
        """Close the incident and mail its end."""
        del book.active[incident.kind]
        notices.append(Notice(incident.kind, Phase.END, incident.since, detail))

    for level in levels:
        incident = book.active.get(level.kind)
        if incident is None:
            if level.value >= level.start_at:
                start(level.kind, level.detail)
        elif level.value < level.end_below:
            end(incident, level.detail)
        else:
            ongoing(incident, level.detail)
    for hit in hits:
        incident = book.active.get(hit.kind)
        if incident is None:
            if hit.new > 0:
                start(hit.kind, hit.detail)
        elif hit.new > 0:
            incident.quiet = 0
            ongoing(incident, hit.detail)
        else:
            incident.quiet += 1
            if incident.quiet >= quiet_checks:
                end(incident, hit.detail)
    notices.extend(Notice(event.kind, Phase.EVENT, now, event.detail) for event in events)
    return notices


def percent_level(
    kind: str, used: float, limit: float, *, threshold_pct: int, hysteresis_pct: int, what: str
) -> Level | None:
    """A level in percent of a limit; None when the check is off (threshold 0) or there is no
    limit. ``what`` names the figure and its unit for the mail ("memory ... MB")."""
    if threshold_pct <= 0 or limit <= 0:
        return None
    pct = 100.0 * used / limit
    end_below = max(0.0, threshold_pct - hysteresis_pct)
    detail = (
        f"{what} {used:.1f} of {limit:g} ({pct:.0f}% of the limit; alert from"
        f" {threshold_pct}%, ends below {end_below:g}%)"
    )
    return Level(kind, pct, threshold_pct, min(end_below, threshold_pct), detail)


def load_level(
    kind: str, load: float, threshold: float | None, hysteresis_pct: int
) -> Level | None:
    """A load average against its threshold; it ends below threshold × (1 − hysteresis %)."""
    if threshold is None or threshold <= 0:
        return None
    end_below = threshold * (1 - hysteresis_pct / 100)
    detail = (
        f"{kind} of the guest's tasks is {load:.2f} (alert from {threshold:g},"
        f" ends below {end_below:.2f})"
    )
    return Level(kind, load, threshold, end_below, detail)
