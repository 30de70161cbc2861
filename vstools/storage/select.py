"""Which storage backend holds a guest's root: by kind for vs-create, by guest.conf for an
existing guest."""

from __future__ import annotations

from collections.abc import Callable

from vstools.config.guest import GuestConf
from vstools.config.values import StorageKind
from vstools.errors import UsageError
from vstools.host.hostconfig import HostConfig
from vstools.paths import Paths
from vstools.storage.base import Storage
from vstools.storage.btrfs import BtrfsStorage
from vstools.storage.lvm import LvmOptions, LvmStorage


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


def guest_storage(host: HostConfig, conf: GuestConf) -> Storage:
    """The backend holding an existing guest's root, as its guest.conf says (SNAPSHOT_SIZE
    comes from the host's create.conf, read only if an lvm guest needs it)."""
    return storage_for(
        host.paths,
        conf.storage,
        lvm_vg=conf.lvm_vg,
        lvm_fs=conf.lvm_fs,
        snapshot_size_mb=lambda: host.create().snapshot_size_mb,
    )
