"""A guest's limits and what it uses of them: shown by vs-limit and vs-stats, changed hot by
vs-limit (cgroup files, and /tmp remounted in the guest's mount namespace) and persisted in
guest.conf, as one operation that rolls back what it did if a step fails."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, replace
from fractions import Fraction

from vstools.config.guest import GuestConf
from vstools.config.values import CpuRatio
from vstools.errors import HostError, VSError
from vstools.guest.lifecycle import HEADER
from vstools.host.cgroup import Cgroup
from vstools.host.cgrouplayout import CFS_PERIOD_US, cfs_quota_us, host_cpu_count, probe_layout
from vstools.host.fsutil import atomic_write
from vstools.host.hostconfig import HostConfig
from vstools.host.rootfs import RESOLVE_GUEST, openat2
from vstools.host.syscalls import MS_NODEV, MS_NOSUID, MS_REMOUNT, mount, setns
from vstools.plan import Step, apply_steps
from vstools.runtime.state import GuestState, read_state
from vstools.storage.select import guest_storage

MB = 1 << 20


@dataclass(frozen=True, slots=True)
class Usage:
    """What a guest uses now (zeros for a stopped guest; disk is measured either way)."""

    rss_mb: float
    disk_mb: float
    tmpfs_mb: float
    processes: int
    cpu_s: float
    rss_hits: int = 0
    oom_kills: int = 0
    proc_hits: int = 0


def disk_used_bytes(host: HostConfig, conf: GuestConf) -> int:
    """What the guest's root uses, as its storage backend counts it: allocated blocks on
    ``dir``, the qgroup's referenced bytes on ``btrfs``, the file system's used blocks on
    ``lvm``. A backend that cannot answer (a missing tool, a vanished volume) counts 0."""

    try:
        return guest_storage(host, conf).used_bytes(conf.name)
    except VSError:
        return 0


def _tmp_statvfs(init_pid: int) -> os.statvfs_result:
    """statvfs of the guest's /tmp, looked up inside the guest's root (never through one of
    its symlinks to a host path)."""

    root = os.open(f"/proc/{init_pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = openat2(root, "tmp", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, resolve=RESOLVE_GUEST)
    finally:
        os.close(root)
    try:
        return os.fstatvfs(fd)
    finally:
        os.close(fd)


def tmpfs_used_bytes(init_pid: int) -> int:
    """Bytes used on the guest's /tmp."""
    stats = _tmp_statvfs(init_pid)
    return (stats.f_blocks - stats.f_bfree) * stats.f_frsize


def tmpfs_size_bytes(init_pid: int) -> int:
    """The size of the guest's /tmp: what its mount enforces."""
    stats = _tmp_statvfs(init_pid)
    return stats.f_blocks * stats.f_frsize


def measure(host: HostConfig, conf: GuestConf, state: GuestState | None) -> Usage:
    """What the guest uses now: zeros but the disk for a stopped guest (``state`` None); /tmp
    counts 0 when it cannot be read."""
    disk_mb = disk_used_bytes(host, conf) / MB
    if state is None:
        return Usage(0.0, disk_mb, 0.0, 0, 0.0)
    cgroup = Cgroup(probe_layout(), state.cgroup)
    tmpfs = 0.0
    with contextlib.suppress(OSError):
        tmpfs = tmpfs_used_bytes(state.init_pid) / MB
    return Usage(
        rss_mb=cgroup.memory_usage_bytes() / MB,
        disk_mb=disk_mb,
        tmpfs_mb=tmpfs,
        processes=cgroup.pids_current(),
        cpu_s=cgroup.cpu_usage_ns() / 1e9,
        rss_hits=cgroup.memory_hits(),
        oom_kills=cgroup.oom_kills(),
        proc_hits=cgroup.pids_hits(),
    )


@dataclass(frozen=True, slots=True)
class Enforced:
    """A running guest's limits as the kernel enforces them (None: unlimited), read back from
    its cgroup files and its /tmp, never from guest.conf (catalogue A8)."""

    rss_mb: float | None
    proc: int | None
    cpu_quota_us: int | None  # per CFS period
    tmpfs_mb: float

    def cpu_ratio(self, cpus: int) -> Fraction | None:
        """The quota as a share of the host's whole CPU capacity."""
        if self.cpu_quota_us is None:
            return None
        return Fraction(self.cpu_quota_us, CFS_PERIOD_US * cpus)


def read_enforced(state: GuestState) -> Enforced:
    """A running guest's limits as the kernel enforces them, read back from its cgroup and its
    /tmp (0 when /tmp cannot be read)."""
    cgroup = Cgroup(probe_layout(), state.cgroup)
    memory = cgroup.memory_limit_bytes()
    cpu = cgroup.cpu_limit()
    tmpfs = 0.0
    with contextlib.suppress(OSError):
        tmpfs = tmpfs_size_bytes(state.init_pid) / MB
    return Enforced(
        None if memory is None else memory / MB,
        cgroup.pids_limit(),
        None if cpu is None else round(cpu[0] * CFS_PERIOD_US / cpu[1]),
        tmpfs,
    )


def drift(conf: GuestConf, enforced: Enforced, cpus: int) -> list[str]:
    """Where the kernel enforces something else than guest.conf says (changed behind vs-tools'
    back): one phrase per limit, empty when they agree."""
    found = []
    if enforced.rss_mb != conf.rss_limit_mb:
        found.append(f"rss {_mb_text(enforced.rss_mb)} (guest.conf says {conf.rss_limit_mb} MB)")
    if enforced.proc != conf.proc_limit:
        found.append(f"proc {enforced.proc or 'unlimited'} (guest.conf says {conf.proc_limit})")
    if enforced.cpu_quota_us != cfs_quota_us(conf.cpu_limit, cpus):
        found.append(
            f"cpu {_ratio_text(enforced.cpu_ratio(cpus))} (guest.conf says {conf.cpu_limit})"
        )
    if enforced.tmpfs_mb and round(enforced.tmpfs_mb) != conf.tmpfs_limit_mb:
        found.append(
            f"tmpfs {_mb_text(enforced.tmpfs_mb)} (guest.conf says {conf.tmpfs_limit_mb} MB)"
        )
    return found


def _mb_text(value: float | None) -> str:
    return "unlimited" if value is None else f"{_number(value)} MB"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def _ratio_text(ratio: Fraction | None) -> str:
    return "unlimited" if ratio is None else str(ratio)


def enforced_limits(
    conf: GuestConf, enforced: Enforced | None, cpus: int
) -> dict[str, int | float | str]:
    """The limits in force, by name (rss, proc, cpu, tmpfs): the kernel's for a running guest
    (``enforced``), guest.conf's otherwise; "unlimited" where the kernel has none."""
    if enforced is None:
        return {
            "rss": conf.rss_limit_mb,
            "proc": conf.proc_limit,
            "cpu": str(conf.cpu_limit),
            "tmpfs": conf.tmpfs_limit_mb,
        }
    cpu = str(conf.cpu_limit)
    if enforced.cpu_quota_us != cfs_quota_us(conf.cpu_limit, cpus):
        cpu = _ratio_text(enforced.cpu_ratio(cpus))
    return {
        "rss": "unlimited" if enforced.rss_mb is None else _whole(enforced.rss_mb),
        "proc": "unlimited" if enforced.proc is None else enforced.proc,
        "cpu": cpu,
        "tmpfs": _whole(round(enforced.tmpfs_mb, 1)) if enforced.tmpfs_mb else conf.tmpfs_limit_mb,
    }


def _whole(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def limits_row(
    host: str, conf: GuestConf, usage: Usage, enforced: Enforced | None = None, cpus: int = 1
) -> dict[str, object]:
    """The vs-limit line's fields: each ``used/limit`` (MB, processes, CPU seconds/ratio); the
    limits of a running guest are the kernel's, a stopped one's are guest.conf's."""
    limits = enforced_limits(conf, enforced, cpus)
    return {
        "host": host,
        "vserver": conf.name,
        "rss": f"{usage.rss_mb:.0f}/{limits['rss']}",
        "disk": f"{usage.disk_mb:.0f}/{conf.disk_limit_mb}",
        "tmpfs": f"{usage.tmpfs_mb:.0f}/{limits['tmpfs']}",
        "proc": f"{usage.processes}/{limits['proc']}",
        "cpu": f"{usage.cpu_s:.0f}/{limits['cpu']}",
    }


@dataclass(frozen=True, slots=True)
class NewLimits:
    """The limits vs-limit is asked to change; None keeps guest.conf's value."""

    rss_mb: int | None = None
    disk_mb: int | None = None
    tmpfs_mb: int | None = None
    proc: int | None = None
    cpu: CpuRatio | None = None

    def applied_to(self, conf: GuestConf) -> GuestConf:
        """``conf`` with these limits in place of its own (None keeps its value)."""
        return replace(
            conf,
            rss_limit_mb=self.rss_mb or conf.rss_limit_mb,
            disk_limit_mb=self.disk_mb or conf.disk_limit_mb,
            tmpfs_limit_mb=self.tmpfs_mb or conf.tmpfs_limit_mb,
            proc_limit=self.proc or conf.proc_limit,
            cpu_limit=self.cpu or conf.cpu_limit,
        )


def plan_limits(host: HostConfig, conf: GuestConf, new: NewLimits) -> list[Step]:
    """Steps that change the limits hot (if the guest runs) and then persist them; each undoes
    itself with the old value."""

    updated = new.applied_to(conf)
    state = read_state(host.paths.guest_run_dir(conf.name))
    steps: list[Step] = []
    if state is not None:
        # Compared with what the kernel enforces, not with guest.conf: the same values as
        # guest.conf repair a limit changed behind vs-tools' back, and an undo puts back
        # exactly what the kernel had.
        cgroup = Cgroup(probe_layout(), state.cgroup)
        cpus = host_cpu_count()
        now = read_enforced(state)
        old_rss = None if now.rss_mb is None else round(now.rss_mb * MB)
        if now.rss_mb != updated.rss_limit_mb:
            steps.append(
                Step(
                    f"set {conf.name} memory limit to {updated.rss_limit_mb} MB",
                    lambda: _set_memory(cgroup, updated.rss_limit_mb),
                    lambda: cgroup.set_memory_limit(old_rss),
                )
            )
        if now.proc != updated.proc_limit:
            steps.append(
                Step(
                    f"set {conf.name} process limit to {updated.proc_limit}",
                    lambda: cgroup.set_pids_limit(updated.proc_limit),
                    lambda: cgroup.set_pids_limit(now.proc),
                )
            )
        if now.cpu_quota_us != cfs_quota_us(updated.cpu_limit, cpus):
            steps.append(
                Step(
                    f"set {conf.name} cpu limit to {updated.cpu_limit} of {cpus} CPUs",
                    lambda: cgroup.set_cpu_limit(updated.cpu_limit, cpus),
                    lambda: cgroup.set_cpu_quota(now.cpu_quota_us),
                )
            )
        old_tmpfs = round(now.tmpfs_mb) or conf.tmpfs_limit_mb
        if old_tmpfs != updated.tmpfs_limit_mb:
            steps.append(
                Step(
                    f"resize {conf.name} /tmp to {updated.tmpfs_limit_mb} MB",
                    lambda: resize_tmp(state.init_pid, updated.tmpfs_limit_mb),
                    lambda: resize_tmp(state.init_pid, old_tmpfs),
                )
            )
    if updated.disk_limit_mb != conf.disk_limit_mb:
        storage = guest_storage(host, conf)
        steps += storage.limit_steps(conf.name, conf.disk_limit_mb, updated.disk_limit_mb)
    if updated != conf:
        target = host.paths.guest_dir(conf.name) / GuestConf.FILE_NAME
        old_text = target.read_text()
        steps.append(
            Step(
                f"write {target}",
                lambda: atomic_write(target, updated.render(header=HEADER)),
                lambda: atomic_write(target, old_text),
            )
        )
    return steps


def _set_memory(cgroup: Cgroup, limit_mb: int) -> None:
    try:
        cgroup.set_memory_limit(limit_mb * MB)
    except HostError as exc:
        used = cgroup.memory_usage_bytes() / MB
        raise HostError(
            f"the guest uses {used:.0f} MB now, more than {limit_mb} MB: {exc}"
        ) from None


def resize_tmp(init_pid: int, size_mb: int) -> None:
    """Remount the guest's /tmp with a new size, inside the guest's mount namespace (a forked
    child joins it, so this process's own view never changes)."""

    ns = os.open(f"/proc/{init_pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    child = os.fork()
    if child == 0:  # pragma: no cover - child process
        code = 0
        try:
            setns(ns)
            os.chdir("/")
            for target in ("/tmp", "/dev/shm"):  # both are sized by TMPFS_LIMIT at start
                flags = MS_REMOUNT | MS_NOSUID | MS_NODEV
                mount(None, target, None, flags, f"size={size_mb}m,mode=1777")
        except BaseException as exc:
            os.write(write_end, str(exc).encode())
            code = 1
        os._exit(code)
    os.close(write_end)
    os.close(ns)
    message = os.read(read_end, 4096).decode(errors="replace")
    os.close(read_end)
    _, status = os.waitpid(child, 0)
    if status != 0:
        raise HostError(f"cannot resize /tmp to {size_mb} MB: {message}")


def apply_limits(host: HostConfig, conf: GuestConf, new: NewLimits, *, dry_run: bool) -> list[str]:
    """Change the limits; returns what was (or, with dry_run, would be) done."""
    steps = plan_limits(host, conf, new)
    apply_steps(steps, dry_run=dry_run)
    return [step.description for step in steps]
