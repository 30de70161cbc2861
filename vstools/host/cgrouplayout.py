"""Where the cgroup hierarchies are: cgroup v2 (one tree with memory, pids and cpu) or v1 (one
mount per controller, plus the controller-less cgroup2 mount of a hybrid host), found from a
mounts table. A frozen ``CgroupLayout`` holds the paths, so tests point it at a fixture tree.
Also the small file helpers and the CFS quota arithmetic that vstools.host.cgroup uses."""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from fractions import Fraction
from pathlib import Path

from vstools.config.values import CpuRatio
from vstools.errors import HostError
from vstools.host.fsutil import pread_record, read_bytes


class CgroupVersion(StrEnum):
    """Which cgroup hierarchy the host uses: v1 (one mount per controller) or v2 (one tree)."""

    V1 = "v1"
    V2 = "v2"


class Controller(StrEnum):
    """Where a file lives: a v1 hierarchy, or CGROUP2 (the cgroup2 mount). On v2 all are one."""

    MEMORY = "memory"
    PIDS = "pids"
    CPU = "cpu"
    CPUACCT = "cpuacct"
    FREEZER = "freezer"
    CGROUP2 = "cgroup2"


# The v1 hierarchies a guest needs; on v2 the same needs are the controllers below.
V1_CONTROLLERS = (
    Controller.MEMORY,
    Controller.PIDS,
    Controller.CPU,
    Controller.CPUACCT,
    Controller.FREEZER,
)
V2_CONTROLLERS = ("memory", "pids", "cpu")
# Controller names that may appear in a v1 mount's options (the rest are rw, relatime, name=...).
_V1_KNOWN = frozenset(
    {"cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "net_cls", "net_prio", "blkio"}
    | {"perf_event", "hugetlb", "pids", "rdma", "misc", "debug"}
)

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True, slots=True)
class CgroupLayout:
    """Where the cgroup hierarchies are mounted.

    ``cgroup2_root``: on V2 the hierarchy itself; on V1 an optional controller-less cgroup2
    mount used for ``cgroup.kill``. ``v1_roots``: controller name -> mount point (V1 only).
    ``membership_roots``: the other v1 hierarchies (blkio, cpuset, devices, name=systemd...),
    where a guest gets a group of its own with no limit in it, so that nothing the guest may
    ever see of a hierarchy is the host's root group (catalogue A2).
    """

    version: CgroupVersion
    cgroup2_root: Path | None = None
    v1_roots: Mapping[str, Path] = field(default_factory=dict, hash=False)
    membership_roots: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        if self.version is CgroupVersion.V2 and self.cgroup2_root is None:
            raise ValueError("a cgroup v2 layout needs its cgroup2 root")
        if self.version is CgroupVersion.V1:
            missing = [c.value for c in V1_CONTROLLERS if c not in self.v1_roots]
            if missing:
                raise ValueError(f"a cgroup v1 layout needs mounts for {', '.join(missing)}")

    @classmethod
    def v2(cls, root: str | Path) -> CgroupLayout:
        """A pure cgroup v2 layout rooted at ``root``."""
        return cls(CgroupVersion.V2, cgroup2_root=Path(root))

    @classmethod
    def v1(
        cls,
        roots: Mapping[str, str | Path],
        cgroup2_root: str | Path | None = None,
        membership_roots: tuple[str | Path, ...] = (),
    ) -> CgroupLayout:
        """A cgroup v1 layout, optionally with a cgroup2 mount used for ``cgroup.kill`` and
        the hierarchies a guest only joins."""
        return cls(
            CgroupVersion.V1,
            cgroup2_root=None if cgroup2_root is None else Path(cgroup2_root),
            v1_roots={name: Path(path) for name, path in roots.items()},
            membership_roots=tuple(Path(p) for p in membership_roots),
        )


def probe_layout(
    mounts_file: str | Path = "/proc/self/mounts", *, fs_root: str | Path = "/"
) -> CgroupLayout:
    """Find the cgroup layout from a mounts table: v2 if a cgroup2 mount offers memory, pids
    and cpu, else v1. Mount points are taken relative to ``fs_root`` (tests pass a fake tree)."""
    with open(mounts_file, encoding="utf-8", errors="replace") as handle:
        lines = handle.read().splitlines()
    cgroup2_mounts: list[Path] = []
    v1_roots: dict[str, Path] = {}
    hierarchies: dict[str, Path] = {}  # every v1 hierarchy by its controllers (or name=)
    for line in lines:
        fields = line.split()
        if len(fields) < 4:
            continue
        # /proc/*/mounts escapes space, tab, newline and backslash as \ooo octal.
        point = _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), fields[1])
        mount_point = Path(fs_root) / point.lstrip("/")
        if fields[2] == "cgroup2":
            cgroup2_mounts.append(mount_point)
        elif fields[2] == "cgroup":
            # A hierarchy may carry several controllers ("cpu,cpuacct"); the first mount of a
            # controller wins, later ones are bind mounts of the same hierarchy.
            options = fields[3].split(",")
            for option in options:
                if option in _V1_KNOWN:
                    v1_roots.setdefault(option, mount_point)
            key = ",".join(sorted(o for o in options if o in _V1_KNOWN or o.startswith("name=")))
            hierarchies.setdefault(key, mount_point)
    for mount_point in cgroup2_mounts:
        if set(V2_CONTROLLERS) <= _listed_controllers(mount_point):
            return CgroupLayout.v2(mount_point)
    # Controllers split between v1 and v2 are not supported: without all three on v2, v1 must
    # provide everything.
    missing = [c.value for c in V1_CONTROLLERS if c not in v1_roots]
    if missing:
        raise HostError(
            f"no usable cgroup hierarchy in {mounts_file}: no cgroup2 mount offers "
            f"{', '.join(V2_CONTROLLERS)}, and cgroup v1 lacks {', '.join(missing)}"
        )
    used = {v1_roots[c] for c in V1_CONTROLLERS}
    others = tuple(p for p in hierarchies.values() if p not in used)
    return CgroupLayout.v1(v1_roots, cgroup2_mounts[0] if cgroup2_mounts else None, others)


def _listed_controllers(cgroup2_dir: Path) -> set[str]:
    try:
        return set(read_file(cgroup2_dir / "cgroup.controllers").split())
    except OSError:
        return set()  # an unreadable cgroup2 mount is not one we can use


# -- cgroup files and CPU arithmetic, shared by vstools.host.cgroup -----------------------------

CFS_PERIOD_US = 100_000  # the kernel's default CFS period (100 ms)
MIN_CFS_QUOTA_US = 1_000  # the kernel refuses quotas below 1 ms with EINVAL


def host_cpu_count() -> int:
    """CPUs this process may run on (its affinity mask), falling back to all online CPUs."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cfs_quota_us(ratio: CpuRatio, cpu_count: int, period_us: int = CFS_PERIOD_US) -> int:
    """CFS quota for ``ratio`` of ``cpu_count`` CPUs: 1/4 of 2 CPUs at 100 ms -> 50000 µs."""
    if cpu_count < 1:
        raise ValueError(f"cpu_count must be at least 1, not {cpu_count}")
    exact = ratio.fraction * cpu_count * period_us
    # Round half up on the exact fraction (no float error), then honour the kernel's minimum.
    return max(MIN_CFS_QUOTA_US, int(exact + Fraction(1, 2)))


def read_file(path: str | Path) -> str:
    """A cgroup file's text (undecodable bytes replaced)."""
    return read_bytes(path).decode("utf-8", errors="replace")


def _keep_below() -> int:
    """Descriptor numbers a file may be kept under: half of RLIMIT_NOFILE. A new descriptor
    takes the lowest free number, so past that half the process's other files (a daemon's
    locks, sockets, mails) need the rest, and a file is read and closed as without keeping."""
    import resource  # only a process that keeps files gets here

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return (1 << 30) if soft == resource.RLIM_INFINITY else soft // 2


class KeptFiles:
    """One group's counter files kept open between reads (the monitor reads the same files of
    every guest at each check): a read is one ``pread`` from offset 0, where opening the file
    each time costs an open, two reads and a close (8 µs of CPU against 1 µs per file on this
    development machine's cgroup v1). Only files the kernel prints at each read, which report
    a size of 0, are kept; a file with a size is a stored file (a test host's tree, whose
    values are replaced by a rename) and is opened at each read, as is any file once half of
    the process's descriptors are used. A kept descriptor of a group removed since fails
    (ENODEV): it is closed and the path opened once more, which finds the group made anew
    there, if any."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}

    def read(self, path: str) -> str:
        """The file's text (undecodable bytes replaced); OSError as ``read_file``."""
        fd = self._fds.get(path)
        if fd is not None:
            try:
                return pread_record(fd).decode("utf-8", errors="replace")
            except OSError:
                del self._fds[path]
                os.close(fd)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = pread_record(fd)
            if os.fstat(fd).st_size == 0 and fd < _keep_below():
                self._fds[path], fd = fd, -1
        finally:
            if fd >= 0:
                os.close(fd)
        return data.decode("utf-8", errors="replace")

    def close(self) -> None:
        """Close every kept descriptor (the next read opens its file again)."""
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)


def write_file(path: Path, value: str) -> None:
    """Write ``value`` to an existing cgroup file in a single write(); OSError when the kernel
    refuses the value or the file is missing (a missing controller)."""
    # One unbuffered write(): the kernel parses each write as a whole value, and a buffered
    # file would report the kernel's answer (EBUSY, EINVAL) only at close, where a dropped
    # file object swallows it. No O_CREAT: a missing file means a missing controller.
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def errno_text(exc: OSError) -> str:
    """An OSError's message with its errno name, e.g. ``Device or resource busy (EBUSY)``."""
    name = errno.errorcode.get(exc.errno or 0, "")
    text = exc.strerror or str(exc)
    return f"{text} ({name})" if name else text


def keyed(text: str) -> dict[str, str]:
    """Parse "key value" lines (memory.events, cpu.stat, cgroup.events, oom_control)."""
    pairs = (line.split(None, 1) for line in text.splitlines() if line.strip())
    return {pair[0]: pair[1].strip() if len(pair) > 1 else "" for pair in pairs}


def inherit_cpuset(parent: Path, child: Path) -> None:
    """A new v1 cpuset group starts with no CPU and no memory node, and a process cannot join
    it: give it its parent's (cgroup.clone_children does the same when it is set)."""
    for name in ("cpuset.cpus", "cpuset.mems"):
        if (child / name).exists() and not read_file(child / name).strip():
            write_file(child / name, read_file(parent / name).strip() or "\n")


def or_max(value: int | None) -> str:
    """A limit as a cgroup file takes it: the number, or ``max`` for None (no limit)."""
    return "max" if value is None else str(value)
