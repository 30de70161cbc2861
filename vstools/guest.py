"""Guest lifecycle: status, start, stop, freeze, thaw, enable and disable, built on the
supervisor (one process per running guest) and the cgroup door."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from vstools.config.create import StorageKind
from vstools.config.guest import GuestConf, userns_base
from vstools.config.settings import Settings
from vstools.errors import HostError, NotFoundError, StateError
from vstools.gueststate import GuestPlan, GuestState, read_state, signal_supervisor
from vstools.hostconfig import GuestFiles, load_guest
from vstools.paths import Paths

if TYPE_CHECKING:
    from vstools.supervisor import Supervisor

# How a guest's init is told to shut down, by what /sbin/init is (LXC's choices): busybox init
# powers off on SIGUSR2, systemd on SIGRTMIN+4, sysvinit on SIGPWR.
STOP_SIGNALS = (("busybox", signal.SIGUSR2), ("systemd", signal.SIGRTMIN + 4))


@dataclass(frozen=True, slots=True)
class GuestStatus:
    name: str
    enabled: bool
    running: bool
    frozen: bool
    init_pid: int | None


def detect_stop_signal(rootfs: Path, init: str) -> int:
    """The shutdown signal of the guest's init, read from where its symlink points (read inside
    the rootfs, never followed out of it)."""
    from vstools.rootfs import GuestRoot

    try:
        with GuestRoot(rootfs) as root:
            target = init
            target = target.split()[0]
            for _ in range(8):  # init -> /lib/systemd/systemd, or sbin/init -> ../bin/busybox
                link = root.readlink(target)
                if link is None:
                    break
                target = (
                    link if link.startswith("/") else os.path.join(os.path.dirname(target), link)
                )
    except OSError:
        return signal.SIGPWR
    for word, signum in STOP_SIGNALS:
        if word in os.path.basename(target) or word in target:
            return signum
    return signal.SIGPWR


def build_plan(paths: Paths, settings: Settings, conf: GuestConf) -> GuestPlan:
    """Everything the supervisor needs, from the guest's configuration."""
    rootfs = paths.guest_root(conf.name)
    return GuestPlan(
        name=conf.name,
        rootfs=str(rootfs),
        run_dir=paths.guest_run_dir(conf.name),
        hostname=conf.hostname or conf.name,
        init=tuple(conf.init.split()),
        rss_mb=conf.rss_limit_mb,
        proc_limit=conf.proc_limit,
        cpu_limit=conf.cpu_limit,
        tmpfs_mb=conf.tmpfs_limit_mb,
        stop_signal=detect_stop_signal(rootfs, conf.init),
        stop_timeout_s=float(settings.stop_timeout_s),
        cgroup_parent=settings.cgroup_parent,
        userns_base=userns_base(conf.context) if conf.userns else 0,
    )


def guest_status(paths: Paths, settings: Settings, name: str) -> GuestStatus:
    conf = load_guest(paths, name).conf
    state = read_state(paths.guest_run_dir(name))
    frozen = False
    if state is not None:
        from vstools.cgroup import Cgroup, probe_layout

        with contextlib.suppress(HostError):
            frozen = Cgroup(probe_layout(), state.cgroup).is_frozen()
    return GuestStatus(
        name, conf.enabled, state is not None, frozen, state.init_pid if state else None
    )


def running_state(paths: Paths, name: str) -> GuestState:
    state = read_state(paths.guest_run_dir(name))
    if state is None:
        raise StateError(f"guest {name} is not running")
    return state


def start_guest(
    paths: Paths, settings: Settings, name: str, *, foreground: bool = False, dry_run: bool = False
) -> GuestPlan:
    """Start the guest; returns once it runs (or, with ``foreground``, once it has stopped).

    A root on its own volume (STORAGE=lvm) is mounted first, by the process that runs the
    supervisor, and unmounted after the guest has stopped (or when the start fails)."""
    from vstools.storage import guest_storage, is_mount_point

    files = load_guest(paths, name)
    if read_state(paths.guest_run_dir(name)) is not None:
        raise StateError(f"guest {name} is already running")
    storage = guest_storage(paths, files.conf)
    if not storage.is_present(name):
        raise NotFoundError(
            f"guest {name}: its root filesystem {paths.guest_root(name)} does not exist"
        )
    readable = storage.kind is not StorageKind.LVM or is_mount_point(paths.guest_root(name))
    if dry_run or (_under_systemd() and not foreground):
        plan = build_plan(paths, settings, files.conf)
        if readable:
            _check_init(plan)
        if not dry_run:
            from vstools.run import run

            run(["systemctl", "start", f"vs-guest@{name}.service"])
        return plan
    mounted = storage.mount(name)
    try:
        plan = build_plan(paths, settings, files.conf)
        _check_init(plan)
        _supervise(paths, settings, files, plan, foreground=foreground, mounted=mounted)
    except BaseException:
        if mounted:
            storage.unmount(name)  # a supervisor that got as far as its after_stop did already
        raise
    return plan


def _check_init(plan: GuestPlan) -> None:
    from vstools.rootfs import GuestRoot

    with GuestRoot(plan.rootfs) as root:
        has_init = root.exists(plan.init[0]) or root.readlink(plan.init[0]) is not None
    if not has_init:
        raise NotFoundError(f"guest {plan.name}: no {plan.init[0]} in {plan.rootfs}")


def _supervise(
    paths: Paths,
    settings: Settings,
    files: GuestFiles,
    plan: GuestPlan,
    *,
    foreground: bool,
    mounted: bool,
) -> None:
    from vstools.cgroup import probe_layout
    from vstools.storage import guest_storage
    from vstools.supervisor import Supervisor

    before_go, network_after_stop = _network_hooks(paths, settings, files)

    def after_stop() -> None:
        try:
            if network_after_stop is not None:
                network_after_stop()
        finally:
            if mounted:
                guest_storage(paths, files.conf).unmount(plan.name)

    supervisor = Supervisor(
        plan,
        probe_layout(),
        on_ready=_notify_systemd if foreground else None,
        before_go=before_go,
        after_stop=after_stop,
    )
    if foreground:
        supervisor.run()
    else:
        _detach(supervisor)


def _network_hooks(
    paths: Paths, settings: Settings, files: GuestFiles
) -> tuple[Callable[[int], None] | None, Callable[[], None] | None]:
    """What the supervisor does around the go: attach the guest to its network with its
    firewall loaded first, and detach it when it has stopped. The firewall is compiled here,
    before anything starts, so a broken firewall.conf or an unresolvable name refuses the
    start cleanly."""
    from vstools.config.settings import NetworkMode
    from vstools.hostconfig import load_create, load_networks
    from vstools.network import Registry, attach, detach, plan_network

    if settings.network is NetworkMode.NONE:
        return None, None
    net = plan_network(files.conf, load_networks(paths), load_create(paths))
    if net is None:
        return None, None
    from vstools.firewall import Firewall, compile_for

    rules = compile_for(files.conf, files.firewall)
    firewall = Firewall(paths, settings)
    registry = Registry(paths.run_dir)

    def before_go(init_pid: int) -> None:
        attach(net, init_pid, registry, lambda: _ignore(firewall.put(rules)), unload)

    def unload() -> None:
        firewall.remove(rules)

    def after_stop() -> None:
        detach(net, registry, unload)

    return before_go, after_stop


def _ignore(_: object) -> None:
    return None


def _under_systemd() -> bool:
    return os.path.isdir("/run/systemd/system") and not os.environ.get("VS_NO_SYSTEMD")


def _notify_systemd(message: str) -> None:
    """Tell systemd (Type=notify) the guest runs; a no-op outside a notify service."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or message != "running":
        return
    import socket

    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"READY=1\nSTATUS=guest running", address)


def _detach(supervisor: Supervisor) -> None:
    """Run the supervisor as a daemon (double fork, new session, stdio on /dev/null) and wait
    until it says the guest runs, or why it does not."""
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    first = os.fork()
    if first == 0:  # pragma: no cover - the daemon's side
        os.close(ready_r)
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)

        def ready(message: str) -> None:
            with contextlib.suppress(OSError):
                os.write(ready_w, message.encode() + b"\n")
                os.close(ready_w)

        supervisor.on_ready = ready
        code = 1
        try:
            code = supervisor.run()
        finally:
            os._exit(code)
    os.close(ready_w)
    os.waitpid(first, 0)
    chunks = []
    while chunk := os.read(ready_r, 4096):
        chunks.append(chunk)
    os.close(ready_r)
    message = b"".join(chunks).decode(errors="replace").strip()
    if message != "running":
        raise HostError(
            message.removeprefix("failed: ") or "the supervisor died before the guest ran"
        )


def stop_guest(
    paths: Paths,
    settings: Settings,
    name: str,
    *,
    timeout_s: float | None = None,
    dry_run: bool = False,
) -> None:
    """Ask the supervisor to stop the guest and wait until it has cleaned up."""
    if request_stop(paths, name, dry_run=dry_run):
        wait_stopped(paths, settings, name, timeout_s=timeout_s)


def request_stop(paths: Paths, name: str, *, dry_run: bool = False) -> bool:
    """Send the guest's supervisor its stop request (SIGTERM, by PID); False on a dry run."""
    state = running_state(paths, name)
    if dry_run:
        return False
    signal_supervisor(state, signal.SIGTERM)
    return True


def wait_stopped(
    paths: Paths, settings: Settings, name: str, *, timeout_s: float | None = None
) -> None:
    """Wait until the supervisor has stopped the guest and released its lock."""
    limit = (timeout_s if timeout_s is not None else settings.stop_timeout_s) + 10.0
    deadline = time.monotonic() + limit
    run_dir = paths.guest_run_dir(name)
    while _lock_held(run_dir):
        if time.monotonic() > deadline:
            raise StateError(f"guest {name} did not stop within {limit:.0f} s")
        time.sleep(0.02)


def _lock_held(run_dir: Path) -> bool:
    from vstools.gueststate import is_running

    return is_running(run_dir)


def freeze_guest(paths: Paths, name: str, *, thaw: bool = False) -> None:
    from vstools.cgroup import Cgroup, probe_layout

    state = running_state(paths, name)
    cgroup = Cgroup(probe_layout(), state.cgroup)
    if thaw:
        cgroup.thaw()
    else:
        cgroup.freeze()


def set_enabled(paths: Paths, name: str, enabled: bool) -> bool:
    """Persist ENABLED in guest.conf; returns whether it changed."""
    from vstools.fsutil import atomic_write, locked

    directory = paths.guest_dir(name)
    with locked(
        paths.run_dir / "locks" / f"{name}.conf.lock", what=f"guest.conf of {name}", timeout_s=5.0
    ):
        conf = load_guest(paths, name).conf
        if conf.enabled == enabled:
            return False
        atomic_write(
            directory / GuestConf.FILE_NAME,
            replace(conf, enabled=enabled).render(header=HEADER),
            mode=0o644,
        )
    return True


HEADER = (
    "Written by vs-tools (vs-create, vs-limit, vs-control --enable/--disable).\n"
    "Edit with care: vs-check validates it."
)
