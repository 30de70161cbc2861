"""The ``lvm`` storage backend: a guest's root is the logical volume LVM_VG/NAME with its own
file system (LVM_FS), mounted at ROOT_DIR/NAME only while the guest runs; its size is the disk
limit, grown hot and shrunk offline; snapshots are ``lvcreate -s`` volumes mounted read-only.
The interface and the other backends are in vstools.storage."""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from vstools.config.values import StorageKind
from vstools.errors import CommandError, HostError, NotFoundError, StateError, UsageError
from vstools.host.run import run, which
from vstools.paths import Paths
from vstools.plan import Step, apply_steps
from vstools.storage.base import (
    RECEIVING,
    Snapshot,
    Storage,
    check_tag,
    cmd_output,
    is_mount_point,
    make_root_dir,
    remove_empty_dir,
    run_cmd,
    secure_root_dir,
    unmount_root,
)


@dataclass(frozen=True, slots=True)
class LvmOptions:
    """The lvm backend's settings: LVM_VG, LVM_FS (ext4 or xfs) and SNAPSHOT_SIZE in MB."""

    vg: str
    fs: str = "ext4"
    snapshot_size_mb: int = 1024


def _run_e2fs(argv: list[str]) -> None:
    """resize2fs and e2fsck print their version banner first: the error keeps the cause."""
    try:
        run_cmd(argv, 600.0)
    except CommandError as exc:
        lines = [line for line in exc.stderr.splitlines() if not line.startswith(argv[0] + " 1.")]
        raise CommandError(exc.cmdline, exc.returncode, "\n".join(lines)) from None


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
        """The logical volume ``name`` (a guest's or a snapshot's) as LVM names it: VG/NAME."""
        return f"{self.options.vg}/{name}"

    def device(self, name: str) -> str:
        """The device of the logical volume ``name``: /dev/VG/NAME."""
        return f"/dev/{self.options.vg}/{name}"

    def check_create(self, name: str, size_mb: int) -> None:
        """Read-only: the LVM tools are installed, the volume group has ``size_mb`` free and no
        volume has the guest's name. Raises with the reason."""

        for tool in ("lvcreate", f"mkfs.{self.options.fs}"):
            if which(tool) is None:
                raise HostError(f"STORAGE=lvm needs {tool}, which is not installed")
        free_mb = self.free_mb()
        if free_mb < size_mb:
            raise HostError(
                f"volume group {self.options.vg} has {free_mb} MB free, {size_mb} MB needed"
            )
        if self._exists(name):
            raise StateError(f"logical volume {self.volume(name)} already exists")

    def free_mb(self) -> int:
        """The volume group's free space in MB (new roots are volumes taken from it);
        NotFoundError when there is no such group."""
        vg = self.options.vg
        shown = run(
            ["vgs", "--noheadings", "--nosuffix", "--units", "m", "-o", "vg_free", vg],
            check=False,
        )
        if shown.returncode != 0:
            raise NotFoundError(f"LVM_VG={vg}: no such volume group ({shown.stderr.strip()})")
        return int(float(shown.stdout.strip() or 0))

    def _exists(self, lv: str) -> bool:
        return run(["lvs", self.volume(lv)], check=False).returncode == 0

    def make_steps(self, name: str, size_mb: int) -> list[Step]:
        """Steps that make the mount point, a volume of ``size_mb``, its file system, and mount it
        at ``root(name)``."""
        root = self.root(name)
        return [
            Step(f"create {root}", partial(make_root_dir, root), partial(remove_empty_dir, root)),
            *self._volume_steps(name, size_mb, root),
        ]

    def _volume_steps(self, lv: str, size_mb: int, mount_point: Path) -> list[Step]:
        """Steps that make the volume ``lv`` of ``size_mb``, its file system, and mount it at
        ``mount_point`` (made if missing)."""
        volume, device = self.volume(lv), self.device(lv)
        return [
            Step(
                f"create the logical volume {volume} of {size_mb} MB",
                partial(self._lvcreate, lv, size_mb),
                partial(self._lvremove, lv),
            ),
            Step(
                f"make an {self.options.fs} file system on {device}",
                partial(self._mkfs, lv),
            ),
            Step(
                f"mount {device} on {mount_point}",
                partial(self._mount, lv, mount_point),
                partial(unmount_root, mount_point),
            ),
        ]

    def _mkfs(self, lv: str) -> None:
        run_cmd(_mkfs_argv(self.options.fs, self.device(lv)), 600.0)

    # -- receive: the volume NAME.receiving (no guest name has a dot), mounted at the place
    # the sender writes in, renamed to NAME once the sender has verified what it holds.

    def open_received(self, name: str, place: Path, size_mb: int) -> bool:
        """The received root is a volume of ``size_mb`` with its own file system, mounted at
        ``place``; one an interrupted transfer left is kept and mounted again (and given its
        file system if the transfer was killed before mkfs: nothing can be in it then)."""
        lv = received_volume(name)
        if not self._exists(lv):
            self.check_create(lv, size_mb)  # the tools, and room in the group: said plainly
            apply_steps(self._volume_steps(lv, size_mb, place))
            return True
        if not self._has_file_system(lv):
            self._mkfs(lv)
        if not is_mount_point(place):
            self._mount(lv, place)
        return False

    def close_received(self, name: str, place: Path) -> None:
        """Unmount the received volume and rename it to the guest's (an lvm guest's volume is
        mounted only while it runs); its empty mount point becomes the guest's root."""
        lv = received_volume(name)
        unmount_root(place)
        if self._exists(lv):
            if self._exists(name):
                raise StateError(
                    f"logical volume {self.volume(name)} exists already: guest {name} cannot be"
                    " put here"
                )
            run_cmd(build_rename_argv(self.options.vg, lv, name))
        elif not self._exists(name):
            raise StateError(
                f"guest {name}: no volume {self.volume(lv)} was received here to put in place"
            )
        super().close_received(name, place)

    def drop_received(self, name: str, place: Path) -> None:
        """Unmount and remove the received volume, then its mount point."""
        unmount_root(place)
        self._lvremove(received_volume(name))
        super().drop_received(name, place)

    def keep_aside(self, name: str, kept: Path) -> None:
        """The volume is renamed as its mount point is (NAME.moved, no guest's name)."""
        self.unmount(name)
        if self._exists(name):
            if self._exists(kept.name):
                raise StateError(f"logical volume {self.volume(kept.name)} exists already")
            run_cmd(build_rename_argv(self.options.vg, name, kept.name))
        super().keep_aside(name, kept)

    def remove_kept(self, name: str, kept: Path) -> None:
        """Remove the kept volume (and any snapshot of it: lvremove --yes takes them too),
        then its mount point."""
        unmount_root(kept)
        self._lvremove(kept.name)
        super().remove_kept(name, kept)

    def _has_file_system(self, lv: str) -> bool:
        # blkid -p reads the device itself (no cache, no udev); exit 2: no signature found.
        found = run(["blkid", "-p", "-o", "value", "-s", "TYPE", self.device(lv)], check=False)
        return found.returncode == 0 and bool(found.stdout.strip())

    def remove_root(self, name: str) -> None:
        """Unmount and delete the guest's volume, then its empty mount point (none if missing)."""
        self.unmount(name)
        self._lvremove(name)
        remove_empty_dir(self.root(name))

    def close_steps(self, name: str) -> list[Step]:
        """One step: unmount the new volume until the guest starts."""
        root = self.root(name)
        return [
            Step(
                f"unmount {root} until the guest starts",
                partial(self.unmount, name),
                partial(self._mount_volume, name),
            )
        ]

    def read_view(self, name: str, tag: str) -> tuple[list[Step], Path, list[Step]]:
        """A stopped guest's files are read from a snapshot: steps to take and mount it, its path,
        steps to remove it."""
        steps, snapshot = self.snapshot_steps(name, tag)
        return steps, snapshot.path, self.remove_snapshot_steps(snapshot)

    def _lvcreate(self, name: str, size_mb: int) -> None:
        run_cmd(
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
            run_cmd(["lvremove", "--yes", self.volume(lv)])

    def _mount_volume(self, name: str) -> None:
        self._mount(name, self.root(name))

    def _mount(self, lv: str, mount_point: Path) -> None:
        secure_root_dir(mount_point.parent)
        mount_point.mkdir(mode=0o755, exist_ok=True)
        run_cmd(["mount", "-t", self.options.fs, "-o", "nodev", self.device(lv), str(mount_point)])

    def is_present(self, name: str) -> bool:
        """True when the guest's logical volume exists, mounted or not."""
        return self._exists(name)

    def mount(self, name: str) -> bool:
        """Mount the guest's volume at ``root(name)``: True if this mounted it, False if it already
        was; NotFoundError when the volume is missing."""
        if is_mount_point(self.root(name)):
            return False
        if not self._exists(name):
            raise NotFoundError(f"guest {name}: its logical volume {self.volume(name)} is missing")
        self._mount_volume(name)
        return True

    def unmount(self, name: str) -> None:
        """Unmount the guest's volume; nothing if it is not mounted."""
        unmount_root(self.root(name))

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
                partial(run_cmd, ["lvreduce", "--yes", "-L", f"{new_mb}m", volume]),
                partial(run_cmd, ["lvextend", "-L", f"{old_mb}m", volume]),
            ),
        ]

    def _grow(self, name: str, new_mb: int, old_mb: int) -> None:
        volume, device, root = self.volume(name), self.device(name), self.root(name)
        run_cmd(["lvextend", "-L", f"{new_mb}m", volume])
        mounted = self.mount(name)
        try:
            if self.options.fs == "xfs":
                run_cmd(["xfs_growfs", str(root)])
            else:
                _run_e2fs(["resize2fs", device])
        except BaseException:
            # The file system is still its old size: the volume can go back safely.
            with contextlib.suppress(HostError):
                run_cmd(["lvreduce", "--yes", "-L", f"{old_mb}m", volume])
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
            out = cmd_output(
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
            out = cmd_output(["dumpe2fs", "-h", self.device(name)])
            keys = ("Block count", "Free blocks", "Block size")
        values = dict(re.findall(r"^([A-Za-z ]+?)\s*[:=]\s*(\d+)\s*$", out, re.M))
        total, free, size = (int(values[key]) for key in keys)
        return (total - free) * size

    def snapshot_steps(self, name: str, tag: str) -> tuple[list[Step], Snapshot]:
        """Steps that take an ``lvcreate -s`` snapshot and mount it read-only (journal not
        replayed), and the snapshot."""
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
                    run_cmd,
                    ["lvcreate", "--yes", "-s", "-L", f"{size}m", "-n", lv, self.volume(name)],
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
        """Steps that unmount the snapshot and remove its volume."""
        lv = f"{snapshot.guest}.{snapshot.tag}"
        return [
            Step(f"unmount {snapshot.path}", partial(_unmount_dir, snapshot.path)),
            Step(f"remove the LVM snapshot {snapshot.volume}", partial(self._lvremove, lv)),
        ]

    def snapshot_tags(self, name: str) -> list[str]:
        """The snapshots of the guest: the volumes NAME.TAG of the group whose origin is its
        volume (lvs)."""
        out = cmd_output(["lvs", "--noheadings", "--separator", ",", "-o", "lv_name,origin",
                          self.options.vg])  # fmt: skip
        return parse_snapshot_tags(out, name)

    def revert_steps(self, name: str, tag: str) -> list[Step]:
        """Steps that merge snapshot ``tag`` back into the (stopped, unmounted) guest's volume
        (lvconvert --merge): the volume becomes what the snapshot holds and the snapshot is
        consumed, as LVM does."""
        lv = f"{name}.{check_tag(tag)}"
        if tag not in self.snapshot_tags(name):
            raise StateError(f"guest {name} has no snapshot {tag}")
        target = self.snapshot_path(name, tag)
        return [
            Step(f"unmount {target}", partial(_unmount_dir, target)),
            Step(
                f"merge the LVM snapshot {self.volume(lv)} into {self.volume(name)}",
                partial(run_cmd, build_merge_argv(self.options.vg, lv)),
            ),
        ]


def parse_snapshot_tags(lvs_output: str, name: str) -> list[str]:
    """The tags of ``name``'s snapshots in ``lvs -o lv_name,origin`` output."""
    tags = []
    for line in lvs_output.splitlines():
        lv, _, origin = line.strip().partition(",")
        if origin == name and lv.startswith(f"{name}."):
            tags.append(lv.split(".", 1)[1])
    return sorted(tags)


def received_volume(name: str) -> str:
    """The volume a guest arriving here is received in: NAME.receiving, which is no guest's
    (guest names have no dot) and no snapshot's (a snapshot has an origin, this has none)."""
    return f"{name}.{RECEIVING}"


def build_rename_argv(vg: str, old: str, new: str) -> list[str]:
    """lvrename of the volume VG/OLD to VG/NEW."""
    return ["lvrename", vg, old, new]


def build_merge_argv(vg: str, lv: str) -> list[str]:
    """lvconvert merging the snapshot VG/LV into its origin (which must not be in use)."""
    return ["lvconvert", "--merge", "--yes", f"{vg}/{lv}"]


def _mount_snapshot(fstype: str, device: str, target: Path, options: str) -> None:
    target.parent.mkdir(mode=0o700, exist_ok=True)
    target.mkdir(mode=0o755, exist_ok=True)
    run_cmd(["mount", "-t", fstype, "-o", options, device, str(target)])


def _unmount_dir(target: Path) -> None:
    if is_mount_point(target):
        run_cmd(["umount", str(target)])
    with contextlib.suppress(FileNotFoundError):
        target.rmdir()


def _mkfs_argv(fstype: str, device: str) -> list[str]:
    # -F / -f: the new volume may hold an old signature lvcreate did not wipe.
    if fstype == "xfs":
        return ["mkfs.xfs", "-q", "-f", device]
    return ["mkfs.ext4", "-q", "-F", device]
