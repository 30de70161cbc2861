"""A guest arriving on this host (vs-put, vs-move): the slave's side. Its root filesystem and
its configuration directory are received under temporary names (``.NAME.receiving``, which no
listing takes for a guest), then committed by renames once the master has verified them: a copy
being made is never taken for a complete one, and a commit that was interrupted is finished by
the next. Also what a sender needs of this host before it sends: room, extended attributes and
ACLs where the roots live."""

from __future__ import annotations

import functools
import os
import shutil
import struct
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

from vstools.config.guest import GuestConf
from vstools.config.lexer import read_config
from vstools.config.values import StorageKind
from vstools.errors import StateError
from vstools.guest.lifecycle import HEADER
from vstools.host.fsutil import atomic_write
from vstools.host.hostconfig import HostConfig
from vstools.host.run import run, run_fed, which
from vstools.names import check_guest_name
from vstools.paths import MOVING_MARKER
from vstools.storage.base import RECEIVING, Storage, secure_root_dir
from vstools.storage.btrfs import (
    delete_subvolume,
    is_subvolume,
    qgroup_limit_mb,
    subvolume_uuids,
    uuid_counts,
)
from vstools.storage.btrfs_stream import guard
from vstools.storage.select import storage_for

BTRFS_RECEIVE = "btrfs-receive"  # what a source asks of the copy key to send a snapshot


def receiving(host: HostConfig, name: str) -> tuple[Path, Path]:
    """Where ``name``'s root and configuration are received: ROOT_DIR/.NAME.receiving and
    GUESTS_CONF_DIR/.NAME.receiving."""
    check_guest_name(name)
    return (
        host.paths.root_dir / f".{name}.{RECEIVING}",
        host.paths.guests_conf_dir / f".{name}.{RECEIVING}",
    )


def receiving_storage(host: HostConfig) -> Storage:
    """The storage backend guests arriving here are received on: create.conf's, as vs-create
    would make them."""
    create = host.create()
    return storage_for(
        host.paths,
        create.storage,
        lvm_vg=create.lvm_vg,
        lvm_fs=create.lvm_fs,
        snapshot_size_mb=create.snapshot_size_mb,
    )


def receive_begin(host: HostConfig, name: str, disk_mb: int) -> dict[str, Any]:
    """Make (or keep, after an interrupted transfer: rsync then sends only the rest) the places
    ``name`` is received in, its root as this host's storage wants it (a directory, a btrfs
    subvolume limited to ``disk_mb``, or a logical volume of ``disk_mb`` mounted there);
    ``fresh``: both were made now (so everything in them will have been sent). StateError
    when the guest already exists here."""
    paths = host.paths
    if paths.guest_dir(name).exists() or paths.guest_root(name).exists():
        raise StateError(f"guest {name} already exists on this host")
    root, conf = receiving(host, name)
    storage = receiving_storage(host)
    secure_root_dir(paths.root_dir)
    had_conf = conf.exists()
    made = storage.open_received(name, root, disk_mb)
    conf.mkdir(parents=True, exist_ok=True)
    return {
        "root": str(root),
        "conf": str(conf),
        "storage": str(storage.kind),
        "fresh": made and not had_conf,
    }


def receive_commit(host: HostConfig, name: str) -> dict[str, str]:
    """Put the received guest in place: its guest.conf told this host's storage, its root then
    its configuration directory renamed to their names (the directory last: the guest exists
    from then on; on lvm the volume is unmounted and renamed, its mount point left empty, as
    a stopped guest's is). Finishes a commit that was interrupted."""
    paths = host.paths
    root, conf = receiving(host, name)
    final_conf = paths.guest_dir(name)
    if final_conf.exists() and not conf.exists():
        return {"root": str(paths.guest_root(name)), "conf": str(final_conf)}  # committed already
    if not conf.exists():
        raise StateError(f"nothing of guest {name} is being received here")
    # A guest moved here was held at its source: that mark is the source's, never this host's.
    (conf / MOVING_MARKER).unlink(missing_ok=True)
    guest_conf = conf / GuestConf.FILE_NAME
    path, text = read_config(guest_conf)
    stored = GuestConf.parse(path, text)
    create = host.create()
    lvm = create.storage is StorageKind.LVM
    local = replace(
        stored,
        storage=create.storage,
        lvm_vg=create.lvm_vg if lvm else None,
        lvm_fs=create.lvm_fs if lvm else stored.lvm_fs,
    )
    if local != stored:
        atomic_write(guest_conf, local.render(header=HEADER))
    receiving_storage(host).close_received(name, root)
    if final_conf.exists():
        raise StateError(f"{final_conf} exists already: guest {name} cannot be put here")
    conf.rename(final_conf)
    host.forget(name)
    return {"root": str(paths.guest_root(name)), "conf": str(final_conf)}


def received_dir(host: HostConfig, name: str) -> Path:
    """Where ``btrfs receive`` puts the snapshots of ``name`` sent from a btrfs source:
    ROOT_DIR/.NAME.received (root's only, like ROOT_DIR)."""
    return host.paths.root_dir / f".{check_guest_name(name)}.received"


def btrfs_receive(host: HostConfig, name: str) -> NoReturn:
    """Be ``btrfs receive`` of a snapshot stream of ``name`` on stdin, into ``received_dir``
    (made here, root's only), chrooted there by btrfs itself: a stream's paths cannot leave
    it. Its UUIDs could (btrfs looks them up in the whole file system): the stream passes
    through a guard (vstools.storage.btrfs_stream) that refuses a snapshot or a clone of any
    subvolume but the one it makes and those received for ``name`` before. Exits with
    btrfs receive's status; refused unless this host receives ``name`` on btrfs."""
    _check_received_on_btrfs(host, name)
    directory = received_dir(host, name)
    directory.mkdir(mode=0o700, exist_ok=True)
    program = which("btrfs")
    if program is None:
        raise StateError("btrfs-progs is not installed")
    stream = guard(functools.partial(os.read, 0), _received_before(directory))
    raise SystemExit(run_fed([program, "receive", "--chroot", "-E", "1", str(directory)], stream))


def _received_before(directory: Path) -> set[uuid.UUID]:
    """The Received UUIDs of the snapshots received whole in ``directory``, each carried by no
    other subvolume of the file system (btrfs would take the first it finds)."""
    counts = uuid_counts(directory)
    allowed = set()
    for entry in directory.iterdir():
        if entry.is_dir() and not entry.is_symlink() and is_subvolume(entry):
            received = subvolume_uuids(entry)[1]
            if received != "-" and counts[received] == 1:
                allowed.add(uuid.UUID(received))
    return allowed


def _check_received_on_btrfs(host: HostConfig, name: str) -> None:
    """btrfs send/receive needs btrfs at both ends: StateError, saying this host's storage,
    unless ``name`` is being received on btrfs here."""
    kind = host.create().storage
    if kind is not StorageKind.BTRFS:
        raise StateError(
            f"guest {name} is received on STORAGE={kind} here: btrfs send/receive needs btrfs"
            " at both ends (rsync copies to this host)"
        )
    if not receiving(host, name)[0].is_dir():
        raise StateError(f"guest {name} is not being received on btrfs here")


def received_clear(host: HostConfig, name: str) -> str:
    """Remove every snapshot received of ``name`` (a send starting anew, an abort); nothing
    where none was received, whatever this host's storage (a move's end asks every
    destination)."""
    directory = received_dir(host, name)
    if directory.is_dir():
        for entry in sorted(directory.iterdir()):
            if entry.is_dir() and not entry.is_symlink() and is_subvolume(entry):
                delete_subvolume(entry)  # a received snapshot, or a receiving root replaced
        shutil.rmtree(directory)
    return str(directory)


def received_take(host: HostConfig, name: str, subvolume: str, uuid: str) -> dict[str, str]:
    """The last snapshot received of ``name`` becomes its receiving root (a writable snapshot of
    it, the disk limit kept), once checked whole: btrfs receive sets its Received UUID last,
    and it must be ``uuid``, the source snapshot's. Quick, for the guest is stopped: what it
    replaces is put aside in the received directory, which received_clear removes once the
    guest runs at its destination."""
    _check_received_on_btrfs(host, name)
    received = received_dir(host, name) / subvolume
    if subvolume.partition(".")[0] != name or not received.is_dir() or received.is_symlink():
        raise StateError(f"nothing named {subvolume} was received here for guest {name}")
    got = subvolume_uuids(received)[1]
    if got != uuid:
        raise StateError(
            f"the snapshot of {name} received here is not whole (received UUID {got}, the"
            f" source's is {uuid}): the guest stays at its source"
        )
    root = receiving(host, name)[0]
    limit = qgroup_limit_mb(root) if root.exists() else None
    if root.exists():
        root.rename(received.parent / f"replaced-{time.time_ns()}")
    run(["btrfs", "subvolume", "snapshot", str(received), str(root)])
    if limit is not None:
        run(["btrfs", "qgroup", "limit", f"{limit}M", str(root)])
    return {"root": str(root)}


def receive_abort(host: HostConfig, name: str) -> None:
    """Remove what was received of ``name`` and not committed."""
    received_clear(host, name)
    root, conf = receiving(host, name)
    receiving_storage(host).drop_received(name, root)
    if conf.exists():
        shutil.rmtree(conf)


def check_room(host: HostConfig, size_mb: int) -> dict[str, Any]:
    """What a sender checks before sending ``size_mb`` of a guest here: free space where the
    roots live, and whether that file system keeps extended attributes and POSIX ACLs (which
    rsync -AX must reproduce)."""
    secure_root_dir(host.paths.root_dir)
    storage = receiving_storage(host)
    free_mb = storage.free_mb()
    where = host.paths.root_dir
    problems = []
    if free_mb < size_mb:
        space = f"volume group {host.create().lvm_vg}" if storage.kind is StorageKind.LVM else where
        problems.append(f"{space} has {free_mb} MB free, {size_mb} MB needed")
    if storage.kind is StorageKind.LVM:
        # Each volume gets its own file system from mkfs (ext4 or xfs): both keep them.
        return {"free_mb": free_mb, "problems": problems}
    with tempfile.NamedTemporaryFile(dir=where, prefix=".vs-check-") as probe:
        for what, attribute, value in (
            ("extended attributes", "trusted.vstools", b"1"),
            ("POSIX ACLs", "system.posix_acl_access", _minimal_acl()),
        ):
            try:
                os.setxattr(probe.name, attribute, value)
            except OSError as exc:
                problems.append(f"{where} does not keep {what} ({exc.strerror})")
    return {"free_mb": free_mb, "problems": problems}


def _minimal_acl() -> bytes:
    """An access ACL equal to mode 0644 (user::rw-, group::r--, other::r--), in the kernel's
    xattr format: a version, then (tag, permissions, id) entries."""
    undefined = 0xFFFFFFFF
    entries = ((0x01, 6, undefined), (0x04, 4, undefined), (0x20, 4, undefined))
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)
