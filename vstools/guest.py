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

from vstools.cgroup import Cgroup, probe_layout
from vstools.config.create import StorageKind
from vstools.config.guest import GuestConf, userns_base
from vstools.config.settings import Settings
from vstools.errors import ConfigError, HostError, NotFoundError, StateError, VSError
from vstools.gueststate import (
    CorruptState,
    GuestPlan,
    GuestState,
    is_alive,
    is_running,
    read_state,
    read_state_file,
    signal_supervisor,
)
from vstools.hostconfig import GuestFiles, load_guest, load_guest_conf
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
    running: bool  # a supervisor holds the lock, or processes of the guest run without one
    frozen: bool
    init_pid: int | None
    orphaned: bool = False  # its processes run but its supervisor is gone (killed)
    problem: str | None = None  # what could not be read (a corrupt state or guest.conf)


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


def guest_cgroup(settings: Settings, name: str) -> Cgroup:
    """The guest's cgroup, named from the settings (so that it is found without its state)."""
    return Cgroup(probe_layout(), f"{settings.cgroup_parent}/{name}")


def guest_status(
    paths: Paths, settings: Settings, name: str, *, lenient: bool = False
) -> GuestStatus:
    """What runs, from the kernel's own records: the supervisor's lock, and processes left in
    the guest's cgroup when the supervisor is gone. Only guest.conf is read (ENABLED); with
    ``lenient`` a broken guest.conf is a ``problem`` instead of an error (after a stop, which
    must always work)."""
    problems: list[str] = []
    try:
        enabled = load_guest_conf(paths, name).enabled
    except (ConfigError, NotFoundError) as exc:
        if not lenient:
            raise
        enabled = enabled_leniently(paths, name)
        problems.append(str(exc))
    run_dir = paths.guest_run_dir(name)
    running = is_running(run_dir)
    state: GuestState | None = None
    try:
        state = read_state(run_dir)
    except CorruptState as exc:
        problems.append(str(exc))
    cgroup = guest_cgroup(settings, name)
    orphaned = not running and bool(_processes(cgroup))
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


def is_active(paths: Paths, settings: Settings, name: str) -> bool:
    """Running for the purpose of --all: a supervisor holds the lock, or the guest's processes
    still run without one (an orphan, which a stop must reach and a start must skip)."""
    return is_running(paths.guest_run_dir(name)) or bool(_processes(guest_cgroup(settings, name)))


def enabled_leniently(paths: Paths, name: str) -> bool:
    """ENABLED of a guest.conf that does not parse as a whole: its last ENABLED line."""
    path = paths.guest_dir(name) / GuestConf.FILE_NAME
    enabled = False
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "ENABLED":
                enabled = value.strip().lower() in ("yes", "true", "1", "on")
    return enabled


def _processes(cgroup: Cgroup) -> list[int]:
    try:
        return cgroup.pids()
    except HostError:
        return []


def running_state(paths: Paths, name: str) -> GuestState:
    state = read_state(paths.guest_run_dir(name))
    if state is None:
        raise StateError(f"guest {name} is not running")
    return state


def start_guest(
    paths: Paths, settings: Settings, name: str, *, foreground: bool = False, dry_run: bool = False
) -> GuestPlan:
    """Start the guest; returns once it runs (or, with ``foreground``, once it has stopped).

    What only the start that wins the guest's lock may do is done by the supervisor once it
    holds it (``_prepare``): refuse a guest whose processes still run without a supervisor,
    clean what a killed one left, mount a root on its own volume (STORAGE=lvm)."""
    from vstools.storage import check_root_not_symlink, guest_storage, is_mount_point

    files = load_guest(paths, name)
    if is_running(paths.guest_run_dir(name)):
        raise StateError(f"guest {name} is already running")
    storage = guest_storage(paths, files.conf)
    check_root_not_symlink(paths.guest_root(name))
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
    plan = build_plan(paths, settings, files.conf)
    _supervise(paths, settings, files, plan, foreground=foreground)
    return plan


def _check_init(plan: GuestPlan) -> None:
    from vstools.rootfs import GuestRoot

    with GuestRoot(plan.rootfs) as root:
        has_init = root.exists(plan.init[0]) or root.readlink(plan.init[0]) is not None
    if not has_init:
        raise NotFoundError(f"guest {plan.name}: no {plan.init[0]} in {plan.rootfs}")


def _prepare(
    paths: Paths, settings: Settings, files: GuestFiles, plan: GuestPlan
) -> tuple[GuestPlan, str]:
    """In the supervisor, holding the guest's lock: refuse an orphan, clean what a killed
    supervisor left, mount the root if it has a volume of its own. Returns the plan (built
    again once the root is readable) and the mount point it mounted, if any."""
    from vstools.storage import guest_storage, secure_root_dir

    name = plan.name
    secure_root_dir(paths.root_dir)
    if _processes(guest_cgroup(settings, name)):
        raise StateError(
            f"guest {name} runs without its supervisor (it was killed):"
            f" vs-control --name {name} --stop stops it first"
        )
    clean_leftovers(paths, settings, name)
    storage = guest_storage(paths, files.conf)
    mounted = storage.mount(name)
    try:
        if mounted:
            plan = build_plan(paths, settings, files.conf)
        _check_init(plan)
    except BaseException:
        if mounted:
            storage.unmount(name)
        raise
    return plan, str(paths.guest_root(name)) if mounted else ""


def _supervise(
    paths: Paths,
    settings: Settings,
    files: GuestFiles,
    plan: GuestPlan,
    *,
    foreground: bool,
) -> None:
    from vstools.storage import unmount_root
    from vstools.supervisor import Supervisor

    before_go, network_after_stop = _network_hooks(paths, settings, files)

    def after_stop(attached: bool) -> None:
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
        prepare=lambda: _prepare(paths, settings, files, plan),
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
        raise error_from_ready(message)


def error_from_ready(message: str) -> VSError:
    """The error a supervisor reported as ``failed CODE: why``, with its own exit code."""
    code, _, why = message.removeprefix("failed ").partition(": ")
    kinds: dict[str, type[VSError]] = {"3": NotFoundError, "4": StateError}
    if not why or not code.isdigit():
        return HostError(message or "the supervisor died before the guest ran")
    return kinds.get(code, HostError)(why)


def stop_guest(
    paths: Paths,
    settings: Settings,
    name: str,
    *,
    timeout_s: float | None = None,
    dry_run: bool = False,
) -> None:
    """Stop the guest and wait until everything of it is gone. Needs nothing but the guest's
    runtime records, so it works whatever its configuration files say (catalogue A9), and also
    stops a guest whose supervisor was killed (A5)."""
    if request_stop(paths, name, dry_run=dry_run):
        wait_stopped(paths, settings, name, timeout_s=timeout_s)
        return
    if dry_run:
        return
    run_dir = paths.guest_run_dir(name)
    cgroup = guest_cgroup(settings, name)
    if not _processes(cgroup) and not _has_leftovers(paths, settings, name):
        raise StateError(f"guest {name} is not running")
    from vstools.fsutil import try_lock

    run_dir.mkdir(parents=True, exist_ok=True)
    with try_lock(run_dir / "lock") as held:
        if not held:  # a supervisor started meanwhile: it is the one to stop
            request_stop(paths, name)
            wait_stopped(paths, settings, name, timeout_s=timeout_s)
            return
        _stop_orphan(paths, settings, name, cgroup, timeout_s)


def request_stop(paths: Paths, name: str, *, dry_run: bool = False) -> bool:
    """Send the guest's supervisor its stop request (SIGTERM, by PID); False when no supervisor
    holds the guest's lock (or on a dry run)."""
    run_dir = paths.guest_run_dir(name)
    if not is_running(run_dir):
        return False
    if not dry_run:
        signal_supervisor(run_dir, name, signal.SIGTERM)
    return not dry_run


def _stop_orphan(
    paths: Paths, settings: Settings, name: str, cgroup: Cgroup, timeout_s: float | None
) -> None:
    """The supervisor is gone: stop the guest as it would have (its init's shutdown signal,
    then after the timeout every process of its cgroup killed) and clean up after it."""
    from vstools.journal import log

    try:
        state = read_state_file(paths.guest_run_dir(name))
    except CorruptState:
        state = None
    pids = _processes(cgroup)
    if pids:
        limit = timeout_s if timeout_s is not None else settings.stop_timeout_s
        alive = state is not None and is_alive(state.init_pid, state.init_start)
        if state is not None and alive and state.init_pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(state.init_pid, state.stop_signal)
            limit = state.stop_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + limit
        while _processes(cgroup) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _processes(cgroup):
            cgroup.kill()
        log.info("step: guest %s, whose supervisor was gone, stopped", name)
    clean_leftovers(paths, settings, name, state=state)


def _has_leftovers(paths: Paths, settings: Settings, name: str) -> bool:
    from vstools.network import NET_RECORD

    run_dir = paths.guest_run_dir(name)
    return (
        (run_dir / "state.json").exists()
        or (run_dir / NET_RECORD).exists()
        or guest_cgroup(settings, name).exists()
    )


def clean_leftovers(
    paths: Paths, settings: Settings, name: str, *, state: GuestState | None = None
) -> list[str]:
    """Remove what a guest that is not running left behind (its supervisor was killed): its
    network and firewall as network.json records them, a root still mounted, its cgroup and
    its state. Needs no configuration file. Returns what was removed (also logged)."""
    from vstools.journal import log
    from vstools.network import Registry, detach, plan_from_record
    from vstools.storage import unmount_root

    run_dir = paths.guest_run_dir(name)
    if state is None:
        with contextlib.suppress(CorruptState):
            state = read_state_file(run_dir)
    done: list[str] = []
    registry = Registry(paths.run_dir)
    record = registry.read(name)
    if record is not None:
        net = plan_from_record(record)
        from vstools.firewall import Firewall
        from vstools.fwmodel import GuestFirewall

        firewall = Firewall(paths, settings)
        guest_fw = GuestFirewall(net.name, net.ip, net.veth)
        problems = detach(net, registry, lambda: _ignore(firewall.remove(guest_fw)))
        done.append(f"network of {name} ({net.ip}, {net.veth})")
        if problems:
            raise HostError(f"guest {name}: could not remove its network: {'; '.join(problems)}")
    if state is not None and state.root_mounted:
        root = Path(state.root_mounted)
        if root == paths.guest_root(name) and os.path.ismount(root):
            unmount_root(root)
            done.append(f"mount {root}")
    cgroup = guest_cgroup(settings, name)
    if cgroup.exists() or any(d.exists() for d in cgroup.directories()):
        cgroup.destroy()
        done.append(f"cgroup {cgroup.relpath}")
    for leftover in (run_dir / "state.json",):
        if leftover.exists():
            leftover.unlink()
            done.append(str(leftover))
    for item in done:
        log.info("step: removed what the stopped guest %s left: %s", name, item)
    return done


def wait_stopped(
    paths: Paths, settings: Settings, name: str, *, timeout_s: float | None = None
) -> None:
    """Wait until the supervisor has stopped the guest and released its lock."""
    limit = (timeout_s if timeout_s is not None else settings.stop_timeout_s) + 10.0
    deadline = time.monotonic() + limit
    run_dir = paths.guest_run_dir(name)
    while is_running(run_dir):
        if time.monotonic() > deadline:
            raise StateError(f"guest {name} did not stop within {limit:.0f} s")
        time.sleep(0.02)


def freeze_guest(paths: Paths, name: str, *, thaw: bool = False) -> None:
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
        conf = load_guest_conf(paths, name)
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
