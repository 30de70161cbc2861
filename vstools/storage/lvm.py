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
from vstools.plan import Step
from vstools.storage.base import (
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
        return run(["lvs", self.volume(lv)], check=False).returncode == 0

    def make_steps(self, name: str, size_mb: int) -> list[Step]:
        """Steps that make the mount point, a volume of ``size_mb``, its file system, and mount it
        at ``root(name)``."""
        root, volume, device = self.root(name), self.volume(name), self.device(name)
        return [
            Step(f"create {root}", partial(make_root_dir, root), partial(remove_empty_dir, root)),
            Step(
                f"create the logical volume {volume} of {size_mb} MB",
                partial(self._lvcreate, name, size_mb),
                partial(self._lvremove, name),
            ),
            Step(
                f"make an {self.options.fs} file system on {device}",
                partial(run_cmd, _mkfs_argv(self.options.fs, device), 600.0),
            ),
            Step(
                f"mount {device} on {root}",
                partial(self._mount_volume, name),
                partial(self.unmount, name),
            ),
        ]

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
        root = self.root(name)
        secure_root_dir(root.parent)
        root.mkdir(mode=0o755, exist_ok=True)
        run_cmd(["mount", "-t", self.options.fs, "-o", "nodev", self.device(name), str(root)])

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
