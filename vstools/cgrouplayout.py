"""Where the cgroup hierarchies are: cgroup v2 (one tree with memory, pids and cpu) or v1 (one
mount per controller, plus the controller-less cgroup2 mount of a hybrid host), found from a
mounts table. A frozen ``CgroupLayout`` holds the paths, so tests point it at a fixture tree."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from vstools.errors import HostError


class CgroupVersion(StrEnum):
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
        return set(_read_file(cgroup2_dir / "cgroup.controllers").split())
    except OSError:
        return set()  # an unreadable cgroup2 mount is not one we can use


def _read_file(path: Path) -> str:
    with open(path, encoding="utf-8", errors="replace") as handle:
        return handle.read()
