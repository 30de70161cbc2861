"""Where a guest's root filesystem lives (STORAGE in create.conf and guest.conf): a plain
directory (``dir``), a btrfs subvolume with a qgroup limit (``btrfs``) or a logical volume with
its own file system, mounted while the guest runs (``lvm``). One interface, three backends:
build the root (as steps with undo), clone one, mount it for a start, change its disk limit,
say how much of it is used, and take read-only snapshots for backups and moves.

Every program (btrfs, lvcreate, mkfs, mount...) runs through vstools.run; the root is always
at ``paths.guest_root(name)``. The lvm backend is in vstools.storagelvm."""

from __future__ import annotations

import contextlib
import os
import re
import stat
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from vstools.config.values import StorageKind
from vstools.errors import CommandError, HostError, StateError, UsageError
from vstools.host.run import run
from vstools.names import guest_name_problem
from vstools.paths import Paths
from vstools.plan import Step, apply_steps

MB = 1 << 20
SNAPSHOT_DIR = ".snapshots"
RECEIVING = "receiving"  # a guest arriving by vs-put or vs-move: ROOT_DIR/.NAME.receiving
DIR_DISK_WARNING = (
    "STORAGE=dir enforces no disk limit: DISK_LIMIT is measured and vs-monitor alerts past"
    " DISK_THRESHOLD (btrfs and lvm storage enforce it)"
)  # under ROOT_DIR: on the guests' own file system (btrfs needs it)


def run_cmd(argv: list[str], timeout_s: float | None = None) -> None:
    """Run ``argv`` through vstools.host.run, its output dropped; CommandError when it fails."""

    run(argv, timeout_s=timeout_s)


def cmd_output(argv: list[str]) -> str:
    """Run ``argv`` through vstools.host.run and return its stdout; CommandError when it fails."""

    return run(argv).stdout


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A read-only copy of a guest's root at one moment: its files are under ``path``."""

    guest: str
    tag: str
    path: Path
    volume: str | None = None  # VG/LV of an LVM snapshot


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
        """Where the guest's root filesystem is (``paths.guest_root``)."""
        return self.paths.guest_root(name)

    def snapshot_path(self, name: str, tag: str) -> Path:
        """Where snapshot ``tag`` of the guest is read: ROOT_DIR/.snapshots/NAME.TAG. UsageError
        for an invalid tag."""
        return self.paths.root_dir / SNAPSHOT_DIR / f"{name}.{check_tag(tag)}"

    # -- create ----------------------------------------------------------------------------

    def check_create(self, name: str, size_mb: int) -> None:
        """Read-only: can a root of ``size_mb`` be made here? Raises with the reason."""

    def make_steps(self, name: str, size_mb: int) -> list[Step]:
        """Steps that make an empty root at ``root(name)``, ready to be filled."""
        root = self.root(name)
        return [Step(f"create {root}", partial(make_root_dir, root), partial(_rmtree, root))]

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
            Step(f"copy the root filesystem of {source_name}", partial(run_cmd, copy)),
            *drop_steps,
        ]

    def close_steps(self, name: str) -> list[Step]:
        """Steps that end a creation (lvm: unmount the new volume until the guest starts)."""
        return []

    def remove_root(self, name: str) -> None:
        """Delete the guest's root for good (nothing if there is none): what an interrupted
        vs-create left, or a removed guest's. A root that is a symlink loses the link only."""
        self._delete_tree(self.root(name))

    def read_view(self, name: str, tag: str) -> tuple[list[Step], Path, list[Step]]:
        """Where the files of a stopped guest can be read from: steps to prepare it, the path,
        steps to drop it. A directory or subvolume is read in place."""
        return [], self.root(name), []

    def free_mb(self) -> int:
        """The room left for new roots, in MB: free space of ROOT_DIR's file system."""
        stats = os.statvfs(self.paths.root_dir)
        return stats.f_bavail * stats.f_frsize // MB

    # -- receive (vs-put, vs-move) ---------------------------------------------------------

    def open_received(self, name: str, place: Path, size_mb: int) -> bool:
        """Make the root ``name`` is received in at ``place``, or keep the one an interrupted
        transfer left (rsync then sends only the rest); True when it was made now, empty."""
        if place.exists() or place.is_symlink():
            return False
        make_root_dir(place)
        return True

    def close_received(self, name: str, place: Path) -> None:
        """Make the root received at ``place`` the guest's, as its root is when it is stopped;
        nothing if that was done already (a commit interrupted, then finished)."""
        if not place.exists():
            return
        root = self.root(name)
        if root.exists() or root.is_symlink():
            raise StateError(f"{root} exists already: guest {name} cannot be put here")
        place.rename(root)

    def drop_received(self, name: str, place: Path) -> None:
        """Remove the root received at ``place`` (nothing if there is none)."""
        self._delete_tree(place)

    # -- moved away (vs-move's source) -------------------------------------------------------

    def keep_aside(self, name: str, kept: Path) -> None:
        """Rename the stopped guest's root to ``kept`` (the source copy of a moved guest, kept
        until it runs at its destination); nothing if that was done already."""
        root = self.root(name)
        if root.exists() or root.is_symlink():
            root.rename(kept)

    def remove_kept(self, name: str, kept: Path) -> None:
        """Delete the root keep_aside kept at ``kept`` (nothing if it is gone)."""
        self._delete_tree(kept)

    def _delete_tree(self, path: Path) -> None:
        """Delete a root at ``path`` (a symlink loses the link only; nothing if missing)."""
        if path.is_symlink():
            path.unlink()
        elif path.exists():
            _rmtree(path)

    # -- run -------------------------------------------------------------------------------

    def is_present(self, name: str) -> bool:
        """True when the guest's root exists: a directory, not a symlink."""
        root = self.root(name)
        return root.is_dir() and not root.is_symlink()

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
        """Bytes the guest's root uses on disk (dir: measured by a walk, ``disk_usage_bytes``)."""
        return disk_usage_bytes(self.root(name))

    # -- snapshots -------------------------------------------------------------------------

    def snapshot_steps(self, name: str, tag: str) -> tuple[list[Step], Snapshot]:
        """Steps that take a read-only snapshot of the guest's root, and the snapshot they make.
        dir has no snapshots: UsageError."""
        raise UsageError(
            f"guest {name}: STORAGE=dir has no snapshots (freeze the guest for a consistent copy)"
        )

    def remove_snapshot_steps(self, snapshot: Snapshot) -> list[Step]:
        """Steps that delete ``snapshot``. dir has no snapshots: UsageError."""
        raise UsageError(f"guest {snapshot.guest}: STORAGE=dir has no snapshots")

    def snapshot_tags(self, name: str) -> list[str]:
        """The tags of the guest's snapshots, sorted. dir has no snapshots: UsageError."""
        raise UsageError(f"guest {name}: STORAGE=dir has no snapshots")

    def revert_steps(self, name: str, tag: str) -> list[Step]:
        """Steps that make the (stopped) guest's root what snapshot ``tag`` holds. dir has no
        snapshots: UsageError."""
        raise UsageError(f"guest {name}: STORAGE=dir has no snapshots")

    def create_snapshot(self, name: str, tag: str) -> Snapshot:
        """Take a read-only snapshot of the guest's root (running or not)."""
        steps, snapshot = self.snapshot_steps(name, tag)
        apply_steps(steps)
        return snapshot

    def remove_snapshot(self, snapshot: Snapshot) -> None:
        """Delete ``snapshot`` (its steps applied, undone on failure)."""
        apply_steps(self.remove_snapshot_steps(snapshot))


# -- btrfs ---------------------------------------------------------------------------------


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


# -- shared --------------------------------------------------------------------------------


def is_mount_point(path: Path) -> bool:
    """True when ``path`` is a mount point."""
    return os.path.ismount(path)


ROOT_DIR_MODE = 0o700


def secure_root_dir(root_dir: Path) -> None:
    """Make ROOT_DIR (mode 0700, owned by root) if it is missing, and close it if it is open:
    a guest's root owns its files, set-id ones included, so no host user may reach them (a
    setuid root binary planted in a guest would run as root for anyone, catalogue A3; LXC
    and Docker keep their container directories 0700 for the same reason). Every path to a
    guest root passes through it: the btrfs subvolumes, the LVM mount points and the
    snapshots beneath are covered by it."""
    root_dir.mkdir(mode=ROOT_DIR_MODE, parents=True, exist_ok=True)
    info = root_dir.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise HostError(f"ROOT_DIR {root_dir} is not a directory (a symlink?): refused")
    if info.st_uid != 0 and os.geteuid() == 0:
        os.chown(root_dir, 0, 0, follow_symlinks=False)
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(root_dir, stat.S_IMODE(info.st_mode) & ~0o077, follow_symlinks=False)


def check_root_not_symlink(root: Path) -> None:
    """A guest's root must be a directory of its own, never a symlink (whose target a start, a
    walk or a copy would use instead). Refused with a message, not a traceback."""
    try:
        info = root.lstat()
    except FileNotFoundError:
        return  # the caller says what is missing
    if stat.S_ISLNK(info.st_mode):
        raise StateError(
            f"the root filesystem {root} is a symlink: refused (it must be a directory)"
        )


def make_root_dir(root: Path) -> None:
    """Make a guest's root directory (mode 0755) in a secured ROOT_DIR; fails if it exists."""
    secure_root_dir(root.parent)
    root.mkdir(mode=0o755)


def unmount_root(root: Path) -> None:
    """Unmount a guest's root (an LVM volume) once it has stopped; nothing if not mounted."""

    if is_mount_point(root):
        try:
            run_cmd(["umount", str(root)])
        except CommandError:
            if is_mount_point(root):  # another process may have unmounted it meanwhile
                raise


def _rmtree(root: Path) -> None:
    import shutil

    # shutil.rmtree works with descriptors on Linux and unlinks symlinks without following them.
    shutil.rmtree(root)


def remove_empty_dir(root: Path) -> None:
    """Remove the empty directory ``root``; nothing if it is missing (OSError if not empty)."""
    with contextlib.suppress(FileNotFoundError):
        root.rmdir()


def disk_usage_bytes(rootfs: Path) -> int:
    """Bytes allocated under ``rootfs`` (st_blocks, so sparse files count what they use), each
    hard-linked inode once, never leaving the file system.

    The guest owns every name below its root and may swap a directory for a symlink to the
    host's / at any moment (RENAME_EXCHANGE, catalogue A7). So the walk holds descriptors, not
    path strings: each directory is opened relative to its parent's descriptor with
    O_NOFOLLOW | O_DIRECTORY, which refuses a symlink or anything but a directory at that very
    moment, and nothing is ever looked up by its full path. A root that is a symlink counts 0."""
    total = 0
    seen: set[tuple[int, int]] = set()
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        top = os.open(rootfs, flags)
    except (FileNotFoundError, NotADirectoryError, OSError):
        return 0
    top_dev = os.fstat(top).st_dev
    stack = [top]
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    with contextlib.suppress(OSError):
                        info = entry.stat(follow_symlinks=False)  # fstatat(dirfd, name)
                        if info.st_dev != top_dev:
                            continue
                        if info.st_nlink > 1 and not stat.S_ISDIR(info.st_mode):
                            key = (info.st_dev, info.st_ino)
                            if key in seen:
                                continue
                            seen.add(key)
                        total += info.st_blocks * 512
                        if stat.S_ISDIR(info.st_mode):
                            child = os.open(entry.name, flags, dir_fd=directory)
                            if os.fstat(child).st_dev != top_dev:
                                os.close(child)  # a mount point: another file system
                                continue
                            stack.append(child)
        except OSError:
            pass
        finally:
            os.close(directory)
    return total
