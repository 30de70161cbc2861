"""A guest's limits and what it uses of them: shown by vs-limit and vs-stats, changed hot by
vs-limit (cgroup files, and /tmp remounted in the guest's mount namespace) and persisted in
guest.conf, as one operation that rolls back what it did if a step fails."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, replace

from vstools.cgroup import Cgroup, host_cpu_count, probe_layout
from vstools.config.guest import GuestConf
from vstools.config.values import CpuRatio
from vstools.errors import HostError, VSError
from vstools.gueststate import GuestState, read_state
from vstools.paths import Paths
from vstools.plan import Step, apply_steps

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


def disk_used_bytes(paths: Paths, conf: GuestConf) -> int:
    """What the guest's root uses, as its storage backend counts it: allocated blocks on
    ``dir``, the qgroup's referenced bytes on ``btrfs``, the file system's used blocks on
    ``lvm``. A backend that cannot answer (a missing tool, a vanished volume) counts 0."""
    from vstools.storage import guest_storage

    try:
        return guest_storage(paths, conf).used_bytes(conf.name)
    except VSError:
        return 0


def tmpfs_used_bytes(init_pid: int) -> int:
    """Bytes used on the guest's /tmp, looked up inside the guest's root (never through one of
    its symlinks to a host path)."""
    from vstools.rootfs import RESOLVE_GUEST, openat2

    root = os.open(f"/proc/{init_pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = openat2(root, "tmp", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, resolve=RESOLVE_GUEST)
    finally:
        os.close(root)
    try:
        stats = os.fstatvfs(fd)
    finally:
        os.close(fd)
    return (stats.f_blocks - stats.f_bfree) * stats.f_frsize


def measure(paths: Paths, conf: GuestConf, state: GuestState | None) -> Usage:
    disk_mb = disk_used_bytes(paths, conf) / MB
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


def limits_row(host: str, conf: GuestConf, usage: Usage) -> dict[str, object]:
    """The vs-limit line's fields: each ``used/limit`` (MB, processes, CPU seconds/ratio)."""
    return {
        "host": host,
        "vserver": conf.name,
        "rss": f"{usage.rss_mb:.0f}/{conf.rss_limit_mb}",
        "disk": f"{usage.disk_mb:.0f}/{conf.disk_limit_mb}",
        "tmpfs": f"{usage.tmpfs_mb:.0f}/{conf.tmpfs_limit_mb}",
        "proc": f"{usage.processes}/{conf.proc_limit}",
        "cpu": f"{usage.cpu_s:.0f}/{conf.cpu_limit}",
    }


@dataclass(frozen=True, slots=True)
class NewLimits:
    rss_mb: int | None = None
    disk_mb: int | None = None
    tmpfs_mb: int | None = None
    proc: int | None = None
    cpu: CpuRatio | None = None

    def applied_to(self, conf: GuestConf) -> GuestConf:
        return replace(
            conf,
            rss_limit_mb=self.rss_mb or conf.rss_limit_mb,
            disk_limit_mb=self.disk_mb or conf.disk_limit_mb,
            tmpfs_limit_mb=self.tmpfs_mb or conf.tmpfs_limit_mb,
            proc_limit=self.proc or conf.proc_limit,
            cpu_limit=self.cpu or conf.cpu_limit,
        )


def plan_limits(paths: Paths, conf: GuestConf, new: NewLimits) -> list[Step]:
    """Steps that change the limits hot (if the guest runs) and then persist them; each undoes
    itself with the old value."""
    from vstools.fsutil import atomic_write
    from vstools.guest import HEADER

    updated = new.applied_to(conf)
    state = read_state(paths.guest_run_dir(conf.name))
    steps: list[Step] = []
    if state is not None:
        cgroup = Cgroup(probe_layout(), state.cgroup)
        cpus = host_cpu_count()
        if updated.rss_limit_mb != conf.rss_limit_mb:
            steps.append(
                Step(
                    f"set {conf.name} memory limit to {updated.rss_limit_mb} MB",
                    lambda: _set_memory(cgroup, updated.rss_limit_mb),
                    lambda: cgroup.set_memory_limit(conf.rss_limit_mb * MB),
                )
            )
        if updated.proc_limit != conf.proc_limit:
            steps.append(
                Step(
                    f"set {conf.name} process limit to {updated.proc_limit}",
                    lambda: cgroup.set_pids_limit(updated.proc_limit),
                    lambda: cgroup.set_pids_limit(conf.proc_limit),
                )
            )
        if updated.cpu_limit != conf.cpu_limit:
            steps.append(
                Step(
                    f"set {conf.name} cpu limit to {updated.cpu_limit} of {cpus} CPUs",
                    lambda: cgroup.set_cpu_limit(updated.cpu_limit, cpus),
                    lambda: cgroup.set_cpu_limit(conf.cpu_limit, cpus),
                )
            )
        if updated.tmpfs_limit_mb != conf.tmpfs_limit_mb:
            steps.append(
                Step(
                    f"resize {conf.name} /tmp to {updated.tmpfs_limit_mb} MB",
                    lambda: resize_tmp(state.init_pid, updated.tmpfs_limit_mb),
                    lambda: resize_tmp(state.init_pid, conf.tmpfs_limit_mb),
                )
            )
    if updated.disk_limit_mb != conf.disk_limit_mb:
        from vstools.storage import guest_storage

        storage = guest_storage(paths, conf)
        steps += storage.limit_steps(conf.name, conf.disk_limit_mb, updated.disk_limit_mb)
    if updated != conf:
        target = paths.guest_dir(conf.name) / GuestConf.FILE_NAME
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
    from vstools.syscalls import MS_NODEV, MS_NOSUID, MS_REMOUNT, mount, setns

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


def apply_limits(paths: Paths, conf: GuestConf, new: NewLimits, *, dry_run: bool) -> list[str]:
    """Change the limits; returns what was (or, with dry_run, would be) done."""
    steps = plan_limits(paths, conf, new)
    apply_steps(steps, dry_run=dry_run)
    return [step.description for step in steps]
