"""apt's machine-readable progress (``APT::Status-Fd``) separated from the rest of its stderr,
and shown as a progress bar on a terminal. Pure apart from the stream it draws on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

# apt-get's status lines (apt's doc/progress-reporting.txt): download, package manager, errors,
# conffile prompts (never asked here: the conffile policy is fixed).
STATUS_PREFIXES = ("dlstatus:", "pmstatus:", "pmerror:", "pmconffile:", "media-change:")


@dataclass(frozen=True, slots=True)
class Status:
    """One status line: its kind, package, percentage and description."""

    kind: str
    package: str
    percent: float
    text: str


def parse_status(line: str) -> Status | None:
    """A status line parsed; None for anything else (apt's ordinary messages)."""
    if not line.startswith(STATUS_PREFIXES):
        return None
    kind, _, rest = line.partition(":")
    package, _, rest = rest.partition(":")
    percent, _, text = rest.partition(":")
    try:
        value = float(percent)
    except ValueError:
        value = 0.0
    return Status(kind, package, value, text.strip())


@dataclass
class LineSplitter:
    """Bytes in, whole lines out (the last partial line kept until its newline comes)."""

    emit: Callable[[str], None]
    _pending: bytes = b""

    def feed(self, data: bytes) -> None:
        """Take a chunk; emit every line it completes."""
        self._pending += data
        *lines, self._pending = self._pending.split(b"\n")
        for line in lines:
            self.emit(line.decode(errors="replace"))

    def close(self) -> None:
        """Emit what is left without a newline."""
        if self._pending:
            self.emit(self._pending.decode(errors="replace"))
            self._pending = b""


@dataclass
class ProgressBar:
    """One line redrawn on a terminal: ``name action [#####     ]  45% text``."""

    stream: TextIO
    label: str
    width: int = 30
    statuses: list[Status] = field(default_factory=list)

    def show(self, status: Status) -> None:
        """Redraw with ``status``."""
        self.statuses.append(status)
        filled = int(self.width * min(max(status.percent, 0.0), 100.0) / 100)
        bar = "#" * filled + " " * (self.width - filled)
        self.stream.write(f"\r\033[K{self.label} [{bar}] {status.percent:3.0f}% {status.text[:40]}")
        self.stream.flush()

    def done(self) -> None:
        """End the line."""
        if self.statuses:
            self.stream.write("\r\033[K")
            self.stream.flush()
