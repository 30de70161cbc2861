"""Removing a test's cgroups even when processes are left in them (a failed test): thawed,
their processes killed by PID, then the groups removed, deepest first."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def remove_tree(top: Path) -> None:
    """``top`` and every group under it."""
    if not top.is_dir():
        return
    for child in sorted(top.rglob("*"), reverse=True):
        if child.is_dir():
            kill_and_remove(child)
    kill_and_remove(top)


def kill_and_remove(directory: Path) -> None:
    """Thaw ``directory`` (cgroup v1 freezer), SIGKILL its processes by PID, remove it."""
    with contextlib.suppress(OSError):
        freezer = directory / "freezer.state"
        if freezer.exists():
            freezer.write_text("THAWED")
    for _ in range(100):
        try:
            pids = [int(p) for p in (directory / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        try:
            directory.rmdir()
            return
        except OSError:
            time.sleep(0.02)
