"""Stopping a guest, whatever state it is in: through its supervisor when one holds its lock;
as the supervisor would have (its init's shutdown signal, then its cgroup killed) when the
supervisor was killed; and removing what a killed supervisor left (network, firewall, a mounted
root, cgroup, state). Everything here works from the guest's runtime records alone, without
any configuration file (catalogue A5, A9)."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from vstools.errors import HostError, StateError
from vstools.guest.lifecycle import guest_cgroup, processes, request_stop, wait_stopped
from vstools.host.cgroup import Cgroup
from vstools.host.fsutil import try_lock
from vstools.host.hostconfig import HostConfig
from vstools.host.journal import log
from vstools.net.plan import NET_RECORD
from vstools.runtime.state import STATE_FILE, CorruptState, GuestState, is_alive, read_state_file
from vstools.storage.base import unmount_root


def stop_guest(
    host: HostConfig,
    name: str,
    *,
    timeout_s: float | None = None,
    dry_run: bool = False,
    kill: bool = False,
) -> None:
    """Stop the guest and wait until everything of it is gone; also a guest whose supervisor
    was killed (A5), whatever its configuration files say (A9). With ``kill`` its processes
    are killed at once, without the shutdown signal."""
    if kill:
        timeout_s = 0.0
    if request_stop(host, name, dry_run=dry_run, kill=kill):
        wait_stopped(host, name, timeout_s=timeout_s)
        return
    if dry_run:
        return
    run_dir = host.paths.guest_run_dir(name)
    cgroup = guest_cgroup(host, name)
    if not processes(cgroup) and not has_leftovers(host, name):
        raise StateError(f"guest {name} is not running")
    run_dir.mkdir(parents=True, exist_ok=True)
    with try_lock(run_dir / "lock") as held:
        if not held:  # a supervisor started meanwhile: it is the one to stop
            request_stop(host, name, kill=kill)
            wait_stopped(host, name, timeout_s=timeout_s)
            return
        stop_orphan(host, name, cgroup, timeout_s)


def stop_orphan(host: HostConfig, name: str, cgroup: Cgroup, timeout_s: float | None) -> None:
    """The supervisor is gone: stop the guest as it would have (its init's shutdown signal,
    then after the timeout every process of its cgroup killed) and clean up after it. The
    caller holds the guest's lock."""
    try:
        state = read_state_file(host.paths.guest_run_dir(name))
    except CorruptState:
        state = None
    pids = processes(cgroup)
    if pids:
        limit = timeout_s if timeout_s is not None else host.settings.stop_timeout_s
        alive = state is not None and is_alive(state.init_pid, state.init_start)
        if state is not None and alive and state.init_pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(state.init_pid, state.stop_signal)
            limit = state.stop_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + limit
        while processes(cgroup) and time.monotonic() < deadline:
            time.sleep(0.05)
        if processes(cgroup):
            cgroup.kill()
        log.info("step: guest %s, whose supervisor was gone, stopped", name)
    clean_leftovers(host, name, state=state)


def has_leftovers(host: HostConfig, name: str) -> bool:
    """Whether a guest that does not run left records, a network or a cgroup behind."""
    run_dir = host.paths.guest_run_dir(name)
    return (
        (run_dir / STATE_FILE).exists()
        or (run_dir / NET_RECORD).exists()
        or guest_cgroup(host, name).exists()
    )


def clean_leftovers(host: HostConfig, name: str, *, state: GuestState | None = None) -> list[str]:
    """Remove what a guest that is not running left behind (its supervisor was killed): its
    network and firewall as network.json records them, a root still mounted, its cgroup and
    its state. Needs no configuration file. Returns what was removed (also logged)."""
    paths = host.paths
    run_dir = paths.guest_run_dir(name)
    if state is None:
        with contextlib.suppress(CorruptState):
            state = read_state_file(run_dir)
    done: list[str] = []
    record = None
    if (run_dir / NET_RECORD).exists():
        # The network and firewall stacks only for a guest that had a network (not on every
        # start, which comes through here to clean what a killed supervisor left).
        from vstools.firewall.host import Firewall
        from vstools.firewall.model import GuestFirewall
        from vstools.net.plan import plan_from_record
        from vstools.net.routed import Registry, detach
        from vstools.plan import discard

        registry = Registry(paths.run_dir)
        record = registry.read(name)
    if record is not None:
        net = plan_from_record(record)
        firewall = Firewall(host)
        guest_fw = GuestFirewall(net.name, net.ip, net.veth)
        problems = detach(net, registry, lambda: discard(firewall.remove(guest_fw)))
        done.append(f"network of {name} ({net.ip}, {net.veth})")
        if problems:
            raise HostError(f"guest {name}: could not remove its network: {'; '.join(problems)}")
    if state is not None and state.root_mounted:
        root = Path(state.root_mounted)
        if root == paths.guest_root(name) and os.path.ismount(root):
            unmount_root(root)
            done.append(f"mount {root}")
    cgroup = guest_cgroup(host, name)
    if cgroup.exists() or any(d.exists() for d in cgroup.directories()):
        cgroup.destroy()
        done.append(f"cgroup {cgroup.relpath}")
    leftover = run_dir / STATE_FILE
    if leftover.exists():
        leftover.unlink()
        done.append(str(leftover))
    for item in done:
        log.info("step: removed what the stopped guest %s left: %s", name, item)
    return done
