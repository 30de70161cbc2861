"""A guest's runtime state as other processes see it: the lock its supervisor holds while the
guest runs, and state.json with the PIDs. Light to import: status commands read it without
loading the runtime (sandbox, seccomp) that starting a guest needs."""

from __future__ import annotations

import os
import signal
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path

from vstools.config.values import CpuRatio
from vstools.errors import StateError
from vstools.host.fsutil import is_locked

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
        """The guest's cgroup, below the cgroup parent (``vs-tools/NAME`` by default)."""
        return f"{self.cgroup_parent}/{self.name}"


class Phase(StrEnum):
    """Where the guest stands in state.json: starting (no init yet) or running."""

    STARTING = "starting"  # the supervisor holds the lock; the guest is being built
    RUNNING = "running"


@dataclass(frozen=True, slots=True)
class GuestState:
    """What ``state.json`` holds while the supervisor holds the lock: written as soon as it has
    the lock (phase starting, no init yet), so a stop request during a start reaches it, and
    again once the guest runs. Also what is needed to stop the guest and clean up after it
    without its configuration (catalogue A9), or after its supervisor was killed (A5)."""

    name: str
    supervisor_pid: int
    supervisor_start: int  # /proc/PID/stat start time: protects against PID reuse
    init_pid: int
    started_at: float
    cgroup: str
    phase: Phase = Phase.RUNNING
    init_start: int = 0  # the init's start time, for the same reason
    stop_signal: int = signal.SIGPWR
    stop_timeout_s: float = 30.0
    root_mounted: str = ""  # a root the supervisor mounted (lvm), unmounted after the stop

    @classmethod
    def from_json(cls, text: str, path: Path) -> GuestState:
        """Parse state.json; CorruptState names the file and what is wrong with it."""
        import json  # only where a state.json exists: status of stopped guests reads none

        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise TypeError("not an object")
            state = cls(**data)
            for key, kind in _STATE_TYPES.items():
                value = getattr(state, key)
                if not isinstance(value, kind) or isinstance(value, bool):
                    raise TypeError(f"{key} is {value!r}")
            return replace(state, phase=Phase(state.phase))
        except (ValueError, TypeError) as exc:
            raise CorruptState(
                f"{path} is corrupt ({exc}); the guest's supervisor holds its lock, so the guest"
                " counts as running: vs-control --stop still stops it"
            ) from None

    def to_json(self) -> str:
        """The state as state.json holds it: one line of JSON."""
        import json

        return json.dumps(asdict(self)) + "\n"


_STATE_TYPES: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "supervisor_pid": int,
    "supervisor_start": int,
    "init_pid": int,
    "started_at": (int, float),
    "cgroup": str,
    "init_start": int,
    "stop_signal": int,
    "stop_timeout_s": (int, float),
    "root_mounted": str,
}


class CorruptState(StateError):
    """state.json of a guest whose supervisor holds the lock cannot be read."""


def process_start_time(pid: int) -> int:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as handle:
        data = handle.read()
    return int(data[data.rindex(")") + 2 :].split()[19])


def is_alive(pid: int, start: int) -> bool:
    """True while ``pid`` is the process that started at ``start`` (not a recycled PID)."""
    try:
        return pid > 0 and process_start_time(pid) == start
    except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
        return False


def is_running(run_dir: Path) -> bool:
    """True while a supervisor holds the guest's lock (the kernel drops it when it dies)."""
    return is_locked(run_dir / LOCK_FILE)


def read_state_file(run_dir: Path) -> GuestState | None:
    """state.json as it is, whoever holds the lock (None when there is none): what a killed
    supervisor left, too. CorruptState when it cannot be read."""
    path = run_dir / STATE_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return GuestState.from_json(text, path)


def read_state(run_dir: Path) -> GuestState | None:
    """The running guest's state, or None when it is not running (or still starting).
    CorruptState when its supervisor holds the lock but its state.json cannot be read."""
    if not is_running(run_dir):
        return None
    state = read_state_file(run_dir)
    if state is None or state.phase is not Phase.RUNNING:
        return None
    return state


class StateReader:
    """``read_state`` of one guest for a caller that asks again and again (the monitor, at
    every check): state.json is parsed again only when it changed. The supervisor replaces it
    whole (a new inode), so its inode, size and mtime tell."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._lock = str(run_dir / LOCK_FILE)
        self._file = str(run_dir / STATE_FILE)
        self._seen: tuple[int, int, int] | None = None
        self._state: GuestState | None = None

    def read(self) -> GuestState | None:
        """As ``read_state``: the running guest's state, or None."""
        if not is_locked(self._lock):
            return None
        try:
            info = os.stat(self._file)
        except FileNotFoundError:
            return None
        seen = (info.st_ino, info.st_size, info.st_mtime_ns)
        if seen != self._seen:
            self._state, self._seen = read_state_file(self.run_dir), seen
        state = self._state
        return state if state is not None and state.phase is Phase.RUNNING else None


def lock_holder(run_dir: Path) -> int | None:
    """The PID holding the guest's lock, as the kernel lists it in /proc/locks: the supervisor
    even when its state.json cannot be read."""
    try:
        info = os.stat(run_dir / LOCK_FILE)
        with open("/proc/locks") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return None
    device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 00:1a:5678 0 EOF" ("->" marks a blocked waiter)
        if fields[1:2] == ["FLOCK"] and fields[3:4] == ["WRITE"] and fields[5:6] == [device]:
            return int(fields[4])
    return None


def signal_supervisor(run_dir: Path, name: str, signum: int) -> None:
    """Signal the guest's supervisor by its PID: the one state.json names (checked by its start
    time) or, when state.json cannot be read, the lock's holder as /proc/locks lists it. The
    PID is held as a pidfd while it is checked, so a recycled PID is never signalled."""
    try:
        state = read_state_file(run_dir)
    except CorruptState:
        state = None
    candidates = [] if state is None else [(state.supervisor_pid, state.supervisor_start)]
    holder = lock_holder(run_dir)
    if holder is not None:
        candidates.append((holder, 0))
    for pid, start in candidates:
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            if (start and is_alive(pid, start)) or (not start and lock_holder(run_dir) == pid):
                signal.pidfd_send_signal(pidfd, signum)
                return
        finally:
            os.close(pidfd)
    raise StateError(f"guest {name}: its supervisor is gone")
