"""A guest arriving on this host (vs-put, vs-move): the slave's side. Its root filesystem and
its configuration directory are received under temporary names (``.NAME.receiving``, which no
listing takes for a guest), then committed by renames once the master has verified them: a copy
being made is never taken for a complete one, and a commit that was interrupted is finished by
the next. Also what a sender needs of this host before it sends: room, extended attributes and
ACLs where the roots live."""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from vstools.config.create import StorageKind
from vstools.config.guest import GuestConf
from vstools.config.lexer import read_config
from vstools.errors import StateError, UsageError
from vstools.guest.lifecycle import HEADER
from vstools.host.fsutil import atomic_write
from vstools.host.hostconfig import HostConfig
from vstools.host.run import run
from vstools.names import check_guest_name
from vstools.paths import MOVING_MARKER
from vstools.storage.base import secure_root_dir
from vstools.storage.btrfs import check_btrfs, delete_subvolume, is_subvolume

MB = 1 << 20
RECEIVING = "receiving"


def receiving(host: HostConfig, name: str) -> tuple[Path, Path]:
    """Where ``name``'s root and configuration are received: ROOT_DIR/.NAME.receiving and
    GUESTS_CONF_DIR/.NAME.receiving."""
    check_guest_name(name)
    return (
        host.paths.root_dir / f".{name}.{RECEIVING}",
        host.paths.guests_conf_dir / f".{name}.{RECEIVING}",
    )


def receive_begin(host: HostConfig, name: str, disk_mb: int) -> dict[str, str]:
    """Make (or keep, after an interrupted transfer: rsync then sends only the rest) the places
    ``name`` is received in, its root as this host's storage wants it (a directory, or a btrfs
    subvolume limited to ``disk_mb``). StateError when the guest already exists here."""
    paths = host.paths
    if paths.guest_dir(name).exists() or paths.guest_root(name).exists():
        raise StateError(f"guest {name} already exists on this host")
    root, conf = receiving(host, name)
    kind = host.create().storage
    if kind is StorageKind.LVM:
        raise UsageError("receiving a guest on STORAGE=lvm is not supported yet")
    secure_root_dir(paths.root_dir)
    if not root.exists():
        if kind is StorageKind.BTRFS:
            check_btrfs(paths.root_dir)
            run(["btrfs", "subvolume", "create", str(root)])
            run(["btrfs", "qgroup", "limit", f"{disk_mb}M", str(root)])
        else:
            root.mkdir(mode=0o755)
    conf.mkdir(parents=True, exist_ok=True)
    return {"root": str(root), "conf": str(conf), "storage": str(kind)}


def receive_commit(host: HostConfig, name: str) -> dict[str, str]:
    """Put the received guest in place: its guest.conf told this host's storage, its root then
    its configuration directory renamed to their names (the directory last: the guest exists
    from then on). Finishes a commit that was interrupted."""
    paths = host.paths
    root, conf = receiving(host, name)
    final_root, final_conf = paths.guest_root(name), paths.guest_dir(name)
    if final_conf.exists() and not conf.exists():
        return {"root": str(final_root), "conf": str(final_conf)}  # committed already
    if not conf.exists():
        raise StateError(f"nothing of guest {name} is being received here")
    # A guest moved here was held at its source: that mark is the source's, never this host's.
    (conf / MOVING_MARKER).unlink(missing_ok=True)
    guest_conf = conf / GuestConf.FILE_NAME
    path, text = read_config(guest_conf)
    stored = GuestConf.parse(path, text)
    create = host.create()
    local = replace(
        stored,
        storage=create.storage,
        lvm_vg=create.lvm_vg if create.storage is StorageKind.LVM else None,
    )
    if local != stored:
        atomic_write(guest_conf, local.render(header=HEADER))
    if root.exists():
        if final_root.exists():
            raise StateError(f"{final_root} exists already: guest {name} cannot be put here")
        root.rename(final_root)
    if final_conf.exists():
        raise StateError(f"{final_conf} exists already: guest {name} cannot be put here")
    conf.rename(final_conf)
    host.forget(name)
    return {"root": str(final_root), "conf": str(final_conf)}


def receive_abort(host: HostConfig, name: str) -> None:
    """Remove what was received of ``name`` and not committed."""
    root, conf = receiving(host, name)
    if root.exists():
        if is_subvolume(root):
            delete_subvolume(root)
        else:
            shutil.rmtree(root)
    if conf.exists():
        shutil.rmtree(conf)


def check_room(host: HostConfig, size_mb: int) -> dict[str, Any]:
    """What a sender checks before sending ``size_mb`` of a guest here: free space where the
    roots live, and whether that file system keeps extended attributes and POSIX ACLs (which
    rsync -AX must reproduce)."""
    secure_root_dir(host.paths.root_dir)
    where = host.paths.root_dir
    stats = os.statvfs(where)
    free_mb = stats.f_bavail * stats.f_frsize // MB
    problems = []
    if free_mb < size_mb:
        problems.append(f"{where} has {free_mb} MB free, {size_mb} MB needed")
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
