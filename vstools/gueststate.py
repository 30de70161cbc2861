"""A guest's runtime state as other processes see it: the lock its supervisor holds while the
guest runs, and state.json with the PIDs. Light to import: status commands read it without
loading the runtime (sandbox, seccomp) that starting a guest needs."""

from __future__ import annotations

import fcntl
import json
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

from vstools.config.values import CpuRatio
from vstools.errors import StateError

STATE_FILE = "state.json"
LOCK_FILE = "lock"
CONSOLE_LOG = "console.log"
GUEST_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "TERM": "linux",
    "HOME": "/root",
    "container": "vs-tools",  # systemd and others read this to know they run in a container
}


@dataclass(frozen=True, slots=True)
class GuestPlan:
    """Everything needed to run one guest, resolved from its configuration."""

    name: str
    rootfs: str
    run_dir: Path
    hostname: str
    init: tuple[str, ...]
    rss_mb: int
    proc_limit: int
    cpu_limit: CpuRatio
    tmpfs_mb: int
    stop_signal: int = signal.SIGPWR
    stop_timeout_s: float = 30.0
    cgroup_parent: str = "vs-tools"
    no_new_privs: bool = False
    userns_base: int = 0  # the host uid of the guest's root in its user namespace; 0: none
    env: dict[str, str] = field(default_factory=lambda: dict(GUEST_ENV))

    @property
    def cgroup_path(self) -> str:
        return f"{self.cgroup_parent}/{self.name}"


@dataclass(frozen=True, slots=True)
class GuestState:
    """What ``state.json`` holds while the guest runs."""

    name: str
    supervisor_pid: int
    supervisor_start: int  # /proc/PID/stat start time: protects against PID reuse
    init_pid: int
    started_at: float
    cgroup: str


def process_start_time(pid: int) -> int:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as handle:
        data = handle.read()
    return int(data[data.rindex(")") + 2 :].split()[19])


def is_running(run_dir: Path) -> bool:
    """True while a supervisor holds the guest's lock (the kernel drops it when it dies)."""
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def read_state(run_dir: Path) -> GuestState | None:
    """The running guest's state, or None when it is not running."""
    if not is_running(run_dir):
        return None
    try:
        data = json.loads((run_dir / STATE_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None  # starting: the lock is taken before the state is written
    return GuestState(**data)


def signal_supervisor(state: GuestState, signum: int) -> None:
    """Signal the guest's supervisor by its PID, after checking the PID still is that process."""
    try:
        if process_start_time(state.supervisor_pid) != state.supervisor_start:
            raise StateError(f"guest {state.name}: supervisor {state.supervisor_pid} is gone")
    except FileNotFoundError:
        raise StateError(f"guest {state.name}: supervisor {state.supervisor_pid} is gone") from None
    os.kill(state.supervisor_pid, signum)
