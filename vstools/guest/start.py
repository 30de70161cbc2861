"""Starting a guest: the checks, the supervisor's plan, how the supervisor runs (foreground for
systemd, a systemd unit, or a daemon), and its hooks: ``prepare`` once it holds the guest's
lock, the network attached with the firewall first before the go, and released after the
stop."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vstools.config.guest import GuestConf, userns_base
from vstools.config.settings import NetworkMode
from vstools.config.values import StorageKind
from vstools.errors import HostError, NotFoundError, StateError, VSError
from vstools.guest.lifecycle import guest_cgroup, processes
from vstools.guest.moving import check_not_moving
from vstools.guest.stop import clean_leftovers
from vstools.host.cgrouplayout import probe_layout
from vstools.host.hostconfig import GuestFiles, HostConfig
from vstools.host.rootfs import GuestRoot
from vstools.host.run import run
from vstools.runtime.state import GuestPlan, is_running
from vstools.runtime.supervisor import Supervisor
from vstools.storage.base import (
    check_root_not_symlink,
    is_mount_point,
    secure_root_dir,
    unmount_root,
)
from vstools.storage.select import guest_storage

# How a guest's init is told to shut down, by what /sbin/init is (LXC's choices): busybox init
# powers off on SIGUSR2, systemd on SIGRTMIN+4, sysvinit on SIGPWR.
STOP_SIGNALS = (("busybox", signal.SIGUSR2), ("systemd", signal.SIGRTMIN + 4))


def detect_stop_signal(rootfs: Path, init: str) -> int:
    """The shutdown signal of the guest's init, read from where its symlink points (read inside
    the rootfs, never followed out of it)."""
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


def build_plan(host: HostConfig, conf: GuestConf) -> GuestPlan:
    """Everything the supervisor needs, from the guest's configuration."""
    paths, settings = host.paths, host.settings
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


def start_guest(
    host: HostConfig, name: str, *, foreground: bool = False, dry_run: bool = False
) -> GuestPlan:
    """Start the guest; returns once it runs (or, with ``foreground``, once it has stopped).

    What only the start that wins the guest's lock may do is done by the supervisor once it
    holds it (``_prepare``): refuse a guest whose processes still run without a supervisor,
    clean what a killed one left, mount a root on its own volume (STORAGE=lvm)."""
    files, plan, readable = _checked(host, name)
    if dry_run or (_under_systemd() and not foreground):
        if readable:
            _check_init(plan)
        if not dry_run:
            run(["systemctl", "start", f"vs-guest@{name}.service"])
        return plan
    supervisor = _supervisor(host, files, plan, foreground=foreground)
    if foreground:
        supervisor.run()
    else:
        _detach(supervisor).wait()
    return plan


def launch_guest(host: HostConfig, name: str) -> Launch | None:
    """Begin a start as ``start_guest`` does and return without waiting for the guest to run:
    the caller waits with ``Launch.wait`` (``vs-control --all --start`` keeps several in
    flight). None when the start is already complete (under systemd, ``systemctl start``)."""
    if _under_systemd():
        start_guest(host, name)
        return None
    files, plan, _ = _checked(host, name)
    return _detach(_supervisor(host, files, plan, foreground=False))


def _checked(host: HostConfig, name: str) -> tuple[GuestFiles, GuestPlan, bool]:
    """The read-only checks of a start; the guest's files, its plan, and whether its root can
    be read yet (a root on its own LVM volume is mounted by the supervisor)."""
    paths = host.paths
    files = host.guest(name)
    if is_running(paths.guest_run_dir(name)):
        raise StateError(f"guest {name} is already running")
    check_not_moving(host, name)
    storage = guest_storage(host, files.conf)
    check_root_not_symlink(paths.guest_root(name))
    if not storage.is_present(name):
        raise NotFoundError(
            f"guest {name}: its root filesystem {paths.guest_root(name)} does not exist"
        )
    readable = storage.kind is not StorageKind.LVM or is_mount_point(paths.guest_root(name))
    return files, build_plan(host, files.conf), readable


def _check_init(plan: GuestPlan) -> None:
    with GuestRoot(plan.rootfs) as root:
        has_init = root.exists(plan.init[0]) or root.readlink(plan.init[0]) is not None
    if not has_init:
        raise NotFoundError(f"guest {plan.name}: no {plan.init[0]} in {plan.rootfs}")


def _prepare(host: HostConfig, files: GuestFiles, plan: GuestPlan) -> tuple[GuestPlan, str]:
    """In the supervisor, holding the guest's lock: refuse an orphan, clean what a killed
    supervisor left, mount the root if it has a volume of its own. Returns the plan (built
    again once the root is readable) and the mount point it mounted, if any."""
    name, paths = plan.name, host.paths
    secure_root_dir(paths.root_dir)
    check_not_moving(host, name)  # again under the lock: a move may have begun since
    if processes(guest_cgroup(host, name)):
        raise StateError(
            f"guest {name} runs without its supervisor (it was killed):"
            f" vs-control --name {name} --stop stops it first"
        )
    clean_leftovers(host, name)
    storage = guest_storage(host, files.conf)
    mounted = storage.mount(name)
    try:
        if mounted:
            plan = build_plan(host, files.conf)
        _check_init(plan)
    except BaseException:
        if mounted:
            storage.unmount(name)
        raise
    return plan, str(paths.guest_root(name)) if mounted else ""


def _supervisor(
    host: HostConfig, files: GuestFiles, plan: GuestPlan, *, foreground: bool
) -> Supervisor:
    before_go, network_after_stop = _network_hooks(host, files)

    def after_stop(attached: bool) -> None:
        """Once the guest has stopped: detach its network if it was attached, then unmount the root
        the supervisor mounted, if any."""
        try:
            if attached and network_after_stop is not None:
                network_after_stop()
        finally:
            if supervisor.root_mounted:
                unmount_root(Path(supervisor.root_mounted))

    supervisor = Supervisor(
        plan,
        probe_layout(),
        on_ready=_notify_systemd if foreground else None,
        before_go=before_go,
        after_stop=after_stop,
        prepare=lambda: _prepare(host, files, plan),
    )
    return supervisor


def _network_hooks(
    host: HostConfig, files: GuestFiles
) -> tuple[Callable[[int], None] | None, Callable[[], None] | None]:
    """What the supervisor does around the go: attach the guest to its network with its
    firewall loaded first, and detach it when it has stopped. The firewall is compiled here,
    before anything starts, so a broken firewall.conf or an unresolvable name refuses the
    start cleanly."""
    if host.settings.network is NetworkMode.NONE:
        return None, None
    from vstools.net.plan import plan_network

    net = plan_network(files.conf, host.networks(), host.create())
    if net is None:
        return None, None
    # The network and firewall stacks (about 20 ms of imports) only for a guest with a network.
    from vstools.firewall.host import Firewall, compile_for
    from vstools.net.routed import Registry, attach, detach
    from vstools.plan import discard

    rules = compile_for(files.conf, files.firewall)
    registry = Registry(host.paths.run_dir)

    def before_go(init_pid: int) -> None:
        """Attach the guest to its network, its firewall loaded first, while its init waits."""
        attach(net, init_pid, registry, lambda: discard(Firewall(host).put(rules)), unload)

    def unload() -> None:
        """Take the guest's firewall out. The supervisor may have run for months: the other
        guests' files are read anew, never from what this start read."""
        Firewall(host.fresh()).remove(rules)

    def after_stop() -> None:
        """Detach the stopped guest from its network, its firewall included."""
        detach(net, registry, unload)

    return before_go, after_stop


def _under_systemd() -> bool:
    return os.path.isdir("/run/systemd/system") and not os.environ.get("VS_NO_SYSTEMD")


def _notify_systemd(message: str) -> None:
    """Tell systemd (Type=notify) the guest runs; a no-op outside a notify service."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or message != "running":
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"READY=1\nSTATUS=guest running", address)


@dataclass(slots=True)
class Launch:
    """A guest whose supervisor runs as a daemon and has not yet said whether the guest runs."""

    name: str
    ready_fd: int  # the supervisor's ready line ends with end of file

    def wait(self) -> None:
        """Read the supervisor's ready line; the error it reported (or its death) is raised."""
        chunks = []
        try:
            while chunk := os.read(self.ready_fd, 4096):
                chunks.append(chunk)
        finally:
            os.close(self.ready_fd)
            _PENDING_READY_FDS.discard(self.ready_fd)
        message = b"".join(chunks).decode(errors="replace").strip()
        if message != "running":
            raise error_from_ready(message)


# The read ends of the starts in flight in this process: a daemon forked meanwhile closes them,
# so that no supervisor holds another guest's ready pipe.
_PENDING_READY_FDS: set[int] = set()


def _detach(supervisor: Supervisor) -> Launch:
    """Run the supervisor as a daemon (double fork, new session, stdio on /dev/null); the
    ``Launch`` to wait on until it says the guest runs, or why it does not."""
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    first = os.fork()
    if first == 0:  # pragma: no cover - the daemon's side
        os.close(ready_r)
        for fd in _PENDING_READY_FDS:
            with contextlib.suppress(OSError):
                os.close(fd)
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)

        def ready(message: str) -> None:
            """Send the ready line (``running`` or ``failed CODE: why``) to the waiting parent; only
            the first one gets through."""
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
    _PENDING_READY_FDS.add(ready_r)
    return Launch(supervisor.plan.name, ready_r)


def error_from_ready(message: str) -> VSError:
    """The error a supervisor reported as ``failed CODE: why``, with its own exit code."""
    code, _, why = message.removeprefix("failed ").partition(": ")
    kinds: dict[str, type[VSError]] = {"3": NotFoundError, "4": StateError}
    if not why or not code.isdigit():
        return HostError(message or "the supervisor died before the guest ran")
    return kinds.get(code, HostError)(why)
