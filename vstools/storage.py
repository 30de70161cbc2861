"""Where a guest's root filesystem lives (STORAGE in create.conf and guest.conf): a plain
directory (``dir``), a btrfs subvolume with a qgroup limit (``btrfs``) or a logical volume with
its own file system, mounted while the guest runs (``lvm``). One interface, three backends:
build the root (as steps with undo), clone one, mount it for a start, change its disk limit,
say how much of it is used, and take read-only snapshots for backups and moves.

Every program (btrfs, lvcreate, mkfs, mount...) runs through vstools.run; the root is always
at ``paths.guest_root(name)``."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from vstools.config.create import StorageKind
from vstools.config.guest import GuestConf
from vstools.errors import CommandError, HostError, NotFoundError, StateError, UsageError
from vstools.names import guest_name_problem
from vstools.paths import Paths
from vstools.plan import Step, apply_steps

MB = 1 << 20
SNAPSHOT_DIR = ".snapshots"  # under ROOT_DIR: on the guests' own file system (btrfs needs it)


def _run(argv: list[str], timeout_s: float | None = None) -> None:
    from vstools.run import run

    run(argv, timeout_s=timeout_s)


def _run_e2fs(argv: list[str]) -> None:
    """resize2fs and e2fsck print their version banner first: the error keeps the cause."""
    try:
        _run(argv, 600.0)
    except CommandError as exc:
        lines = [line for line in exc.stderr.splitlines() if not line.startswith(argv[0] + " 1.")]
        raise CommandError(exc.cmdline, exc.returncode, "\n".join(lines)) from None


def _output(argv: list[str]) -> str:
    from vstools.run import run

    return run(argv).stdout


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A read-only copy of a guest's root at one moment: its files are under ``path``."""

    guest: str
    tag: str
    path: Path
    volume: str | None = None  # VG/LV of an LVM snapshot


@dataclass(frozen=True, slots=True)
class LvmOptions:
    vg: str
    fs: str = "ext4"
    snapshot_size_mb: int = 1024


def check_tag(tag: str) -> str:
    """A snapshot tag follows the guest-name rule, so NAME.TAG is unambiguous (names have no
    dot) and safe in a path, an LV name and a command line."""
    problem = guest_name_problem(tag)
    if problem is not None:
        raise UsageError(f"invalid snapshot tag {tag!r}: {problem}")
    return tag


class Storage:
    """The ``dir`` backend, and the interface the others keep."""

    kind = StorageKind.DIR

    def __init__(self, paths: Paths) -> None:
        self.paths = paths

    def root(self, name: str) -> Path:
        return self.paths.guest_root(name)

    def snapshot_path(self, name: str, tag: str) -> Path:
        return self.paths.root_dir / SNAPSHOT_DIR / f"{name}.{check_tag(tag)}"

    # -- create ----------------------------------------------------------------------------

    def check_create(self, name: str, size_mb: int) -> None:
        """Read-only: can a root of ``size_mb`` be made here? Raises with the reason."""

    def make_steps(self, name: str, size_mb: int) -> list[Step]:
        """Steps that make an empty root at ``root(name)``, ready to be filled."""
        root = self.root(name)
        return [Step(f"create {root}", partial(_mkdir_root, root), partial(_rmtree, root))]

    def clone_steps(self, name: str, size_mb: int, source: Storage, source_name: str) -> list[Step]:
        """Steps that make the root of ``name`` as a copy of the (stopped) guest
        ``source_name``; sparse files, hard links, xattrs and owners are kept."""
        view_steps, view, drop_steps = source.read_view(source_name, "clone")
        copy = [
            "cp",
            "-a",
            "--reflink=auto",
            "--sparse=always",
            "--",
            f"{view}/.",
            str(self.root(name)),
        ]
        return [
            *view_steps,
            *self.make_steps(name, size_mb),
            Step(f"copy the root filesystem of {source_name}", partial(_run, copy)),
            *drop_steps,
        ]

    def close_steps(self, name: str) -> list[Step]:
        """Steps that end a creation (lvm: unmount the new volume until the guest starts)."""
        return []

    def read_view(self, name: str, tag: str) -> tuple[list[Step], Path, list[Step]]:
        """Where the files of a stopped guest can be read from: steps to prepare it, the path,
        steps to drop it. A directory or subvolume is read in place."""
        return [], self.root(name), []

    # -- run -------------------------------------------------------------------------------

    def is_present(self, name: str) -> bool:
        return self.root(name).is_dir()

    def mount(self, name: str) -> bool:
        """Make the root available at ``root(name)`` for a start; True if this mounted it."""
        return False

    def unmount(self, name: str) -> None:
        """Undo ``mount`` once the guest has stopped (no-op when not mounted)."""

    # -- limits and usage ------------------------------------------------------------------

    def limit_steps(self, name: str, old_mb: int, new_mb: int) -> list[Step]:
        """Steps that change the disk limit hot (dir: measured only, nothing to change)."""
        return []

    def used_bytes(self, name: str) -> int:
        return disk_usage_bytes(self.root(name))

    # -- snapshots -------------------------------------------------------------------------

    def snapshot_steps(self, name: str, tag: str) -> tuple[list[Step], Snapshot]:
        raise UsageError(
            f"guest {name}: STORAGE=dir has no snapshots (freeze the guest for a consistent copy)"
        )

    def remove_snapshot_steps(self, snapshot: Snapshot) -> list[Step]:
        raise UsageError(f"guest {snapshot.guest}: STORAGE=dir has no snapshots")

    def create_snapshot(self, name: str, tag: str) -> Snapshot:
        """Take a read-only snapshot of the guest's root (running or not)."""
        steps, snapshot = self.snapshot_steps(name, tag)
        apply_steps(steps)
        return snapshot

    def remove_snapshot(self, snapshot: Snapshot) -> None:
        apply_steps(self.remove_snapshot_steps(snapshot))


# -- btrfs ---------------------------------------------------------------------------------


class BtrfsStorage(Storage):
    """Each root is a subvolume at ROOT_DIR/NAME, its disk limit the subvolume's qgroup limit
    on referenced bytes (the filesystem must have quotas enabled); a clone of a btrfs guest is
    a writable snapshot (instant, sharing every extent until either side writes)."""

    kind = StorageKind.BTRFS

    def check_create(self, name: str, size_mb: int) -> None:
        check_btrfs(self.paths.root_dir)

    def make_steps(self, name: str, size_mb: int) -> list[Step]:
        root = self.root(name)
        return [
            Step(
                f"create the btrfs subvolume {root}",
                partial(self._create_subvolume, root),
                partial(_delete_subvolume, root),
            ),
            self._limit_step(root, size_mb),
        ]

    def clone_steps(self, name: str, size_mb: int, source: Storage, source_name: str) -> list[Step]:
        if source.kind is not StorageKind.BTRFS:
            return super().clone_steps(name, size_mb, source, source_name)
        root, origin = self.root(name), source.root(source_name)
        return [
            Step(
                f"snapshot the btrfs subvolume {origin} as {root}",
                partial(_run, ["btrfs", "subvolume", "snapshot", str(origin), str(root)]),
                partial(_delete_subvolume, root),
            ),
            self._limit_step(root, size_mb),
        ]

    def _create_subvolume(self, root: Path) -> None:
        root.parent.mkdir(parents=True, exist_ok=True)
        _run(["btrfs", "subvolume", "create", str(root)])
        root.chmod(0o755)

    def _limit_step(self, root: Path, size_mb: int) -> Step:
        # No undo of its own: the subvolume's deletion takes its qgroup with it.
        return Step(
            f"limit {root} to {size_mb} MB (btrfs qgroup)",
            partial(_run, ["btrfs", "qgroup", "limit", f"{size_mb}M", str(root)]),
        )

    def limit_steps(self, name: str, old_mb: int, new_mb: int) -> list[Step]:
        root = self.root(name)
        used = self.used_bytes(name)
        if new_mb < old_mb and used > new_mb * MB:
            raise StateError(
                f"guest {name} uses {used / MB:.0f} MB of its disk now, more than {new_mb} MB:"
                " free space in it first"
            )
        return [
            Step(
                f"set {name} disk limit to {new_mb} MB (btrfs qgroup of {root})",
                partial(_run, ["btrfs", "qgroup", "limit", f"{new_mb}M", str(root)]),
                partial(_run, ["btrfs", "qgroup", "limit", f"{old_mb}M", str(root)]),
            )
        ]

    def used_bytes(self, name: str) -> int:
        """The subvolume's qgroup referenced bytes, as of the last transaction commit (at most
        the commit interval, 30 s by default, old)."""
        root = self.root(name)
        if not root.is_dir():
            return 0
        return qgroup_referenced(root)

    def snapshot_steps(self, name: str, tag: str) -> tuple[list[Step], Snapshot]:
        root, target = self.root(name), self.snapshot_path(name, tag)
        snapshot = Snapshot(name, tag, target)
        return [
            Step(
                f"take a read-only btrfs snapshot of {root} at {target}",
                partial(_snapshot_ro, root, target),
                partial(_delete_subvolume, target),
            )
        ], snapshot

    def remove_snapshot_steps(self, snapshot: Snapshot) -> list[Step]:
        return [
            Step(
                f"delete the btrfs snapshot {snapshot.path}",
                partial(_delete_subvolume, snapshot.path),
            )
        ]


def _snapshot_ro(root: Path, target: Path) -> None:
    target.parent.mkdir(mode=0o700, exist_ok=True)
    _run(["btrfs", "subvolume", "snapshot", "-r", str(root), str(target)])


def _delete_subvolume(path: Path) -> None:
    # The kernel drops the subvolume's qgroup itself once its cleaner has freed the extents.
    if path.exists():
        _run(["btrfs", "subvolume", "delete", "--commit-after", str(path)])


def check_btrfs(root_dir: Path) -> None:
    """ROOT_DIR (or, before it exists, its nearest existing parent) is on btrfs with quotas
    enabled: without them the disk limit could not be enforced."""
    where = root_dir
    while not where.exists() and where != where.parent:
        where = where.parent
    fstype = filesystem_type(where)
    if fstype != "btrfs":
        raise HostError(
            f"STORAGE=btrfs needs ROOT_DIR {root_dir} on a btrfs file system; it is on {fstype}"
        )
    from vstools.run import run

    shown = run(["btrfs", "qgroup", "show", str(where)], check=False)
    if shown.returncode != 0:
        reason = (shown.stderr.strip().splitlines() or ["btrfs qgroup show failed"])[-1]
        raise HostError(
            f"STORAGE=btrfs needs quotas on the file system of {root_dir} for the disk limits"
            f" ({reason}): btrfs quota enable {where}"
        )


def qgroup_referenced(path: Path) -> int:
    """Referenced bytes of the qgroup of the subvolume at ``path`` (0/<subvolume id>)."""
    out = _output(["btrfs", "qgroup", "show", "--raw", "-f", str(path)])
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[0].startswith("0/") and fields[1].isdigit():
            return int(fields[1])
    raise HostError(f"no qgroup for {path} in: {out.strip()}")


def filesystem_type(path: Path) -> str:
    """The type of the file system holding ``path``: the longest mount point above it in
    /proc/self/mounts (spaces and the like are octal escapes there)."""
    target = os.path.realpath(path)
    best, fstype = "", "unknown"
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[1])
            inside = target == point or target.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best):
                best, fstype = point, fields[2]
    return fstype


# -- lvm -----------------------------------------------------------------------------------


class LvmStorage(Storage):
    """Each root is the logical volume VG/NAME, LVM_VG's volume of DISK_LIMIT MB with an ext4
    or xfs file system, mounted at ROOT_DIR/NAME (``nodev``) while the guest runs (and while
    vs-create fills it). Snapshots are ``lvcreate -s`` volumes of SNAPSHOT_SIZE MB mounted
    read-only; a clone copies the files of such a snapshot of its source into a new volume."""

    kind = StorageKind.LVM

    def __init__(self, paths: Paths, options: LvmOptions) -> None:
        super().__init__(paths)
        self.options = options

    def volume(self, name: str) -> str:
        return f"{self.options.vg}/{name}"

    def device(self, name: str) -> str:
        return f"/dev/{self.options.vg}/{name}"

    def check_create(self, name: str, size_mb: int) -> None:
        from vstools.run import run, which

        for tool in ("lvcreate", f"mkfs.{self.options.fs}"):
            if which(tool) is None:
                raise HostError(f"STORAGE=lvm needs {tool}, which is not installed")
        vg = self.options.vg
        shown = run(
            ["vgs", "--noheadings", "--nosuffix", "--units", "m", "-o", "vg_free", vg],
            check=False,
        )
        if shown.returncode != 0:
            raise NotFoundError(f"LVM_VG={vg}: no such volume group ({shown.stderr.strip()})")
        free_mb = float(shown.stdout.strip() or 0)
        if free_mb < size_mb:
            raise HostError(f"volume group {vg} has {free_mb:.0f} MB free, {size_mb} MB needed")
        if self._exists(name):
            raise StateError(f"logical volume {self.volume(name)} already exists")

    def _exists(self, lv: str) -> bool:
        from vstools.run import run

        return run(["lvs", self.volume(lv)], check=False).returncode == 0

    def make_steps(self, name: str, size_mb: int) -> list[Step]:
        root, volume, device = self.root(name), self.volume(name), self.device(name)
        return [
            Step(f"create {root}", partial(_mkdir_root, root), partial(_rmdir, root)),
            Step(
                f"create the logical volume {volume} of {size_mb} MB",
                partial(self._lvcreate, name, size_mb),
                partial(self._lvremove, name),
            ),
            Step(
                f"make an {self.options.fs} file system on {device}",
                partial(_run, _mkfs_argv(self.options.fs, device), 600.0),
            ),
            Step(
                f"mount {device} on {root}",
                partial(self._mount_volume, name),
                partial(self.unmount, name),
            ),
        ]

    def close_steps(self, name: str) -> list[Step]:
        root = self.root(name)
        return [
            Step(
                f"unmount {root} until the guest starts",
                partial(self.unmount, name),
                partial(self._mount_volume, name),
            )
        ]

    def read_view(self, name: str, tag: str) -> tuple[list[Step], Path, list[Step]]:
        steps, snapshot = self.snapshot_steps(name, tag)
        return steps, snapshot.path, self.remove_snapshot_steps(snapshot)

    def _lvcreate(self, name: str, size_mb: int) -> None:
        _run(
            [
                "lvcreate",
                "--yes",
                "--wipesignatures",
                "y",
                "-L",
                f"{size_mb}m",
                "-n",
                name,
                self.options.vg,
            ]
        )

    def _lvremove(self, lv: str) -> None:
        if self._exists(lv):
            _run(["lvremove", "--yes", self.volume(lv)])

    def _mount_volume(self, name: str) -> None:
        root = self.root(name)
        root.mkdir(mode=0o755, exist_ok=True)
        _run(["mount", "-t", self.options.fs, "-o", "nodev", self.device(name), str(root)])

    def is_present(self, name: str) -> bool:
        return self._exists(name)

    def mount(self, name: str) -> bool:
        if is_mount_point(self.root(name)):
            return False
        if not self._exists(name):
            raise NotFoundError(f"guest {name}: its logical volume {self.volume(name)} is missing")
        self._mount_volume(name)
        return True

    def unmount(self, name: str) -> None:
        root = self.root(name)
        if is_mount_point(root):
            try:
                _run(["umount", str(root)])
            except CommandError:
                if is_mount_point(root):  # another process may have unmounted it meanwhile
                    raise

    def limit_steps(self, name: str, old_mb: int, new_mb: int) -> list[Step]:
        """Grow: the volume then its file system, hot (ext4 and xfs both grow mounted; a
        stopped guest's volume is mounted for the resize). A grown file system cannot be
        shrunk back hot, so the step has no undo. Shrink: only ext4, only stopped (e2fsck,
        resize2fs, lvreduce, each undone by growing back)."""
        if new_mb == old_mb:
            return []
        volume, device = self.volume(name), self.device(name)
        if new_mb > old_mb:
            return [
                Step(
                    f"grow {volume} and its {self.options.fs} file system to {new_mb} MB",
                    partial(self._grow, name, new_mb, old_mb),
                )
            ]
        if self.options.fs != "ext4":
            raise UsageError(
                f"guest {name}: {self.options.fs} cannot shrink; its disk can only grow"
            )
        if is_mount_point(self.root(name)):
            raise StateError(
                f"guest {name}: a mounted ext4 file system cannot shrink; stop the guest to"
                f" shrink its disk from {old_mb} to {new_mb} MB"
            )
        return [
            Step(
                f"check the file system of {device}",
                partial(_run_e2fs, ["e2fsck", "-f", "-p", device]),
            ),
            Step(
                f"shrink the file system of {device} to {new_mb} MB",
                partial(_run_e2fs, ["resize2fs", device, f"{new_mb}M"]),
                partial(_run_e2fs, ["resize2fs", device]),
            ),
            Step(
                f"shrink {volume} to {new_mb} MB",
                partial(_run, ["lvreduce", "--yes", "-L", f"{new_mb}m", volume]),
                partial(_run, ["lvextend", "-L", f"{old_mb}m", volume]),
            ),
        ]

    def _grow(self, name: str, new_mb: int, old_mb: int) -> None:
        volume, device, root = self.volume(name), self.device(name), self.root(name)
        _run(["lvextend", "-L", f"{new_mb}m", volume])
        mounted = self.mount(name)
        try:
            if self.options.fs == "xfs":
                _run(["xfs_growfs", str(root)])
            else:
                _run_e2fs(["resize2fs", device])
        except BaseException:
            # The file system is still its old size: the volume can go back safely.
            with contextlib.suppress(HostError):
                _run(["lvreduce", "--yes", "-L", f"{old_mb}m", volume])
            raise
        finally:
            if mounted:
                self.unmount(name)

    def used_bytes(self, name: str) -> int:
        """Used blocks of the volume's file system: statvfs when mounted, else read from the
        unmounted ext4 superblock (dumpe2fs -h) or xfs one (xfs_db -r)."""
        root = self.root(name)
        if is_mount_point(root):
            stats = os.statvfs(root)
            return (stats.f_blocks - stats.f_bfree) * stats.f_frsize
        if not self._exists(name):
            return 0
        if self.options.fs == "xfs":
            out = _output(
                [
                    "xfs_db",
                    "-r",
                    "-c",
                    "sb 0",
                    "-c",
                    "print dblocks fdblocks blocksize",
                    self.device(name),
                ]
            )
            keys = ("dblocks", "fdblocks", "blocksize")
        else:
            out = _output(["dumpe2fs", "-h", self.device(name)])
            keys = ("Block count", "Free blocks", "Block size")
        values = dict(re.findall(r"^([A-Za-z ]+?)\s*[:=]\s*(\d+)\s*$", out, re.M))
        total, free, size = (int(values[key]) for key in keys)
        return (total - free) * size

    def snapshot_steps(self, name: str, tag: str) -> tuple[list[Step], Snapshot]:
        lv = f"{name}.{check_tag(tag)}"
        target = self.snapshot_path(name, tag)
        snapshot = Snapshot(name, tag, target, self.volume(lv))
        size = self.options.snapshot_size_mb
        # A snapshot of a mounted file system is crash-consistent (LVM freezes it while the
        # snapshot is made); mounting it read-only must not replay its journal: ext4 noload,
        # xfs norecovery (and nouuid, its origin being mounted with the same UUID).
        options = "ro,nodev,nosuid,noexec," + (
            "norecovery,nouuid" if self.options.fs == "xfs" else "noload"
        )
        return [
            Step(
                f"take an LVM snapshot {snapshot.volume} of {self.volume(name)} ({size} MB)",
                partial(
                    _run, ["lvcreate", "--yes", "-s", "-L", f"{size}m", "-n", lv, self.volume(name)]
                ),
                partial(self._lvremove, lv),
            ),
            Step(
                f"mount {snapshot.volume} read-only on {target}",
                partial(
                    _mount_snapshot, self.options.fs, f"/dev/{snapshot.volume}", target, options
                ),
                partial(_unmount_dir, target),
            ),
        ], snapshot

    def remove_snapshot_steps(self, snapshot: Snapshot) -> list[Step]:
        lv = f"{snapshot.guest}.{snapshot.tag}"
        return [
            Step(f"unmount {snapshot.path}", partial(_unmount_dir, snapshot.path)),
            Step(f"remove the LVM snapshot {snapshot.volume}", partial(self._lvremove, lv)),
        ]


def _mount_snapshot(fstype: str, device: str, target: Path, options: str) -> None:
    target.parent.mkdir(mode=0o700, exist_ok=True)
    target.mkdir(mode=0o755, exist_ok=True)
    _run(["mount", "-t", fstype, "-o", options, device, str(target)])


def _unmount_dir(target: Path) -> None:
    if is_mount_point(target):
        _run(["umount", str(target)])
    with contextlib.suppress(FileNotFoundError):
        target.rmdir()


def _mkfs_argv(fstype: str, device: str) -> list[str]:
    # -F / -f: the new volume may hold an old signature lvcreate did not wipe.
    if fstype == "xfs":
        return ["mkfs.xfs", "-q", "-f", device]
    return ["mkfs.ext4", "-q", "-F", device]


# -- shared --------------------------------------------------------------------------------


def is_mount_point(path: Path) -> bool:
    return os.path.ismount(path)


def _mkdir_root(root: Path) -> None:
    root.parent.mkdir(parents=True, exist_ok=True)
    root.mkdir(mode=0o755)


def _rmtree(root: Path) -> None:
    import shutil

    shutil.rmtree(root)


def _rmdir(root: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        root.rmdir()


def disk_usage_bytes(rootfs: Path) -> int:
    """Bytes allocated under ``rootfs`` (st_blocks, so sparse files count what they use), each
    hard-linked inode once, never following symlinks or leaving the file system."""
    total = 0
    seen: set[tuple[int, int]] = set()
    try:
        top_dev = rootfs.lstat().st_dev
    except FileNotFoundError:
        return 0
    stack = [str(rootfs)]
    while stack:
        directory = stack.pop()
        with contextlib.suppress(OSError), os.scandir(directory) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    info = entry.stat(follow_symlinks=False)
                    if info.st_dev != top_dev:
                        continue
                    if info.st_nlink > 1:
                        key = (info.st_dev, info.st_ino)
                        if key in seen:
                            continue
                        seen.add(key)
                    total += info.st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
    return total


def storage_for(
    paths: Paths,
    kind: StorageKind,
    *,
    lvm_vg: str | None = None,
    lvm_fs: str = "ext4",
    snapshot_size_mb: int | Callable[[], int] = 1024,
) -> Storage:
    """The backend of ``kind``; lvm needs its volume group."""
    if kind is StorageKind.BTRFS:
        return BtrfsStorage(paths)
    if kind is StorageKind.LVM:
        if lvm_vg is None:
            raise UsageError("STORAGE=lvm needs LVM_VG")
        size = snapshot_size_mb() if callable(snapshot_size_mb) else snapshot_size_mb
        return LvmStorage(paths, LvmOptions(lvm_vg, lvm_fs, size))
    return Storage(paths)


def guest_storage(paths: Paths, conf: GuestConf) -> Storage:
    """The backend holding an existing guest's root, as its guest.conf says (SNAPSHOT_SIZE
    comes from the host's create.conf)."""

    def snapshot_size_mb() -> int:
        from vstools.hostconfig import load_create

        return load_create(paths).snapshot_size_mb

    return storage_for(
        paths,
        conf.storage,
        lvm_vg=conf.lvm_vg,
        lvm_fs=conf.lvm_fs,
        snapshot_size_mb=snapshot_size_mb,
    )
