"""A guest's state and the small changes to it: status (from the kernel's own records), the
stop request to its supervisor, freeze and thaw, enable and disable. Starting is
vstools.guest.start; a complete stop, orphans included, is vstools.guest.stop."""

from __future__ import annotations

import contextlib
import signal
import time
from dataclasses import dataclass, replace

from vstools.config.guest import GuestConf
from vstools.errors import ConfigError, HostError, NotFoundError, StateError
from vstools.host.cgroup import Cgroup
from vstools.host.fsutil import atomic_write, locked
from vstools.host.hostconfig import HostConfig
from vstools.runtime.state import (
    CorruptState,
    GuestState,
    is_running,
    read_state,
    signal_supervisor,
)

HEADER = (
    "Written by vs-tools (vs-create, vs-limit, vs-control --enable/--disable).\n"
    "Edit with care: vs-check validates it."
)


@dataclass(frozen=True, slots=True)
class GuestStatus:
    """A guest's state as vs-control shows it, from the kernel's own records."""

    name: str
    enabled: bool
    running: bool  # a supervisor holds the lock, or processes of the guest run without one
    frozen: bool
    init_pid: int | None
    orphaned: bool = False  # its processes run but its supervisor is gone (killed)
    problem: str | None = None  # what could not be read (a corrupt state or guest.conf)


def guest_cgroup(host: HostConfig, name: str) -> Cgroup:
    """The guest's cgroup, named from the settings (so that it is found without its state)."""
    return Cgroup(host.cgroup_layout(), f"{host.settings.cgroup_parent}/{name}")


def processes(cgroup: Cgroup) -> list[int]:
    """The processes in a guest's cgroup; none when it is gone."""
    try:
        return cgroup.pids()
    except HostError:
        return []


def guest_status(host: HostConfig, name: str, *, lenient: bool = False) -> GuestStatus:
    """What runs, from the kernel's own records: the supervisor's lock, and processes left in
    the guest's cgroup when the supervisor is gone. Only guest.conf is read (ENABLED); with
    ``lenient`` a broken guest.conf is a ``problem`` instead of an error (after a stop, which
    must always work)."""
    problems: list[str] = []
    try:
        enabled = host.guest_conf(name).enabled
    except (ConfigError, NotFoundError) as exc:
        if not lenient:
            raise
        enabled = enabled_leniently(host, name)
        problems.append(str(exc))
    run_dir = host.paths.guest_run_dir(name)
    running = is_running(run_dir)
    state: GuestState | None = None
    try:
        state = read_state(run_dir)
    except CorruptState as exc:
        problems.append(str(exc))
    cgroup = guest_cgroup(host, name)
    orphaned = not running and bool(processes(cgroup))
    frozen = False
    if running or orphaned:
        with contextlib.suppress(HostError):
            frozen = cgroup.is_frozen()
    if orphaned:
        problems.append(
            f"guest {name} runs without its supervisor (it was killed):"
            f" vs-control --name {name} --stop stops it"
        )
    return GuestStatus(
        name,
        enabled,
        running or orphaned,
        frozen,
        state.init_pid if state else None,
        orphaned=orphaned,
        problem="; ".join(problems) or None,
    )


def is_active(host: HostConfig, name: str) -> bool:
    """Running for the purpose of --all: a supervisor holds the lock, or the guest's processes
    still run without one (an orphan, which a stop must reach and a start must skip)."""
    return is_running(host.paths.guest_run_dir(name)) or bool(processes(guest_cgroup(host, name)))


def enabled_leniently(host: HostConfig, name: str) -> bool:
    """ENABLED of a guest.conf that does not parse as a whole: its last ENABLED line."""
    path = host.paths.guest_dir(name) / GuestConf.FILE_NAME
    enabled = False
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "ENABLED":
                enabled = value.strip().lower() in ("yes", "true", "1", "on")
    return enabled


def running_state(host: HostConfig, name: str) -> GuestState:
    """The state of a running guest; StateError when it is not running."""
    state = read_state(host.paths.guest_run_dir(name))
    if state is None:
        raise StateError(f"guest {name} is not running")
    return state


def request_stop(host: HostConfig, name: str, *, dry_run: bool = False, kill: bool = False) -> bool:
    """Send the guest's supervisor its stop request (SIGTERM, by PID), or with ``kill`` kill
    every process of the guest's cgroup at once (the supervisor then sees its init end and
    cleans up as after any end); False when no supervisor holds the guest's lock (or on a dry
    run)."""
    run_dir = host.paths.guest_run_dir(name)
    if not is_running(run_dir):
        return False
    if not dry_run:
        if kill:
            guest_cgroup(host, name).kill()
        else:
            signal_supervisor(run_dir, name, signal.SIGTERM)
    return not dry_run


def wait_stopped(host: HostConfig, name: str, *, timeout_s: float | None = None) -> None:
    """Wait until the supervisor has stopped the guest and released its lock."""
    limit = (timeout_s if timeout_s is not None else host.settings.stop_timeout_s) + 10.0
    deadline = time.monotonic() + limit
    run_dir = host.paths.guest_run_dir(name)
    while is_running(run_dir):
        if time.monotonic() > deadline:
            raise StateError(f"guest {name} did not stop within {limit:.0f} s")
        time.sleep(0.02)


def freeze_guest(host: HostConfig, name: str, *, thaw: bool = False) -> None:
    """Freeze (or thaw) every process of a running guest with the cgroup freezer."""
    state = running_state(host, name)
    cgroup = Cgroup(host.cgroup_layout(), state.cgroup)
    if thaw:
        cgroup.thaw()
    else:
        cgroup.freeze()


def set_enabled(host: HostConfig, name: str, enabled: bool) -> bool:
    """Persist ENABLED in guest.conf; returns whether it changed."""
    paths = host.paths
    with locked(
        paths.run_dir / "locks" / f"{name}.conf.lock", what=f"guest.conf of {name}", timeout_s=5.0
    ):
        host.forget(name)  # read again under the lock
        conf = host.guest_conf(name)
        if conf.enabled == enabled:
            return False
        atomic_write(
            paths.guest_dir(name) / GuestConf.FILE_NAME,
            replace(conf, enabled=enabled).render(header=HEADER),
            mode=0o644,
        )
        host.forget(name)
    return True
