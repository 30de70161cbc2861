"""Starting many guests at once (``vs-control --all --start``): a bounded number of starts in
flight, each the whole transactional start of ``vstools.guest.start`` in its own supervisor.
What every start would import or create anew (libseccomp's binding, pyroute2, the parent
cgroup) is done once here, before the supervisors are forked, so they inherit it."""

from __future__ import annotations

import contextlib
import select
from collections.abc import Callable, Sequence

from vstools.config.settings import NetworkMode
from vstools.errors import VSError
from vstools.guest.start import Launch, launch_guest
from vstools.host.cgroup import Cgroup
from vstools.host.hostconfig import HostConfig
from vstools.host.netlink import preload as preload_netlink
from vstools.runtime.sandbox import preload as preload_seccomp

# Starts in flight at once by default: a start mostly waits (fork, mounts, the network lock,
# nft), so a few per CPU keep the CPUs busy without letting 100 supervisors compete at once.
DEFAULT_PARALLEL = 8


def start_guests(
    host: HostConfig,
    names: Sequence[str],
    *,
    parallel: int = DEFAULT_PARALLEL,
    launch: Callable[[HostConfig, str], Launch | None] = launch_guest,
) -> dict[str, VSError | None]:
    """Start the guests, at most ``parallel`` at once; each guest's outcome (None: it runs).
    A failed start is rolled back by its own supervisor and does not stop the others."""
    outcomes: dict[str, VSError | None] = {}
    if not names:
        return outcomes
    _preload(host)
    queue = list(names)
    in_flight: dict[int, Launch] = {}
    while queue or in_flight:
        while queue and len(in_flight) < max(1, parallel):
            name = queue.pop(0)
            try:
                pending = launch(host, name)
            except VSError as exc:
                outcomes[name] = exc
                continue
            if pending is None:
                outcomes[name] = None
            else:
                in_flight[pending.ready_fd] = pending
        if not in_flight:
            continue
        readable, _, _ = select.select(list(in_flight), [], [])
        for fd in readable:
            pending = in_flight.pop(fd)
            try:
                pending.wait()
            except VSError as exc:
                outcomes[pending.name] = exc
            else:
                outcomes[pending.name] = None
    return outcomes


def _preload(host: HostConfig) -> None:
    """What every supervisor needs, once in the parent. The parent cgroup is made here too:
    v1's cpuset copies its CPUs from the parent, which racing first starts could see empty."""
    preload_seccomp()
    with contextlib.suppress(VSError):  # a broken networks.conf fails each start, with its why
        if host.settings.network is not NetworkMode.NONE and host.networks().networks:
            preload_netlink()
    Cgroup(host.cgroup_layout(), host.settings.cgroup_parent).create()
