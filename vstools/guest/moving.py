"""The source's side of vs-move: a guest held (it refuses to start while it is being moved, so
it never runs twice), then, once it runs at its destination, kept aside as NAME.moved (gone
from every listing: a name with a dot is no guest's) and last removed. Every function can be
called again after an interruption and does only what is left."""

from __future__ import annotations

import shutil
from pathlib import Path

from vstools.config.values import StorageKind
from vstools.errors import StateError, UsageError
from vstools.guest.lifecycle import is_active
from vstools.host.fsutil import atomic_write
from vstools.host.hostconfig import HostConfig
from vstools.names import check_guest_name
from vstools.paths import MOVED_SUFFIX, MOVING_MARKER
from vstools.storage.base import SNAPSHOT_DIR
from vstools.storage.btrfs import delete_subvolume, is_subvolume


def moving_to(host: HostConfig, name: str) -> str | None:
    """The host ``name`` is being moved to, if a move holds it."""
    try:
        text = (host.paths.guest_dir(name) / MOVING_MARKER).read_text()
    except FileNotFoundError:
        return None
    return text.strip() or "another host"


def check_not_moving(host: HostConfig, name: str) -> None:
    """StateError when a move holds ``name`` (a start would make it run twice)."""
    target = moving_to(host, name)
    if target is not None:
        raise StateError(
            f"guest {name} is being moved to {target}: it starts there, or here again once the"
            f" move is rolled back (run the same vs-move again on the master to finish it)"
        )


def hold(host: HostConfig, name: str, target: str) -> None:
    """Mark ``name`` as being moved to ``target``: from now on it refuses to start here."""
    directory = host.paths.guest_dir(check_guest_name(name))
    if not directory.is_dir():
        raise StateError(f"no guest named {name} on this host")
    atomic_write(directory / MOVING_MARKER, f"{target}\n")


def release(host: HostConfig, name: str) -> None:
    """The move of ``name`` was rolled back: it may start here again."""
    (host.paths.guest_dir(check_guest_name(name)) / MOVING_MARKER).unlink(missing_ok=True)


def moved_paths(host: HostConfig, name: str) -> tuple[Path, Path]:
    """Where a moved guest's configuration directory and root are kept: NAME.moved."""
    paths = host.paths
    check_guest_name(name)
    return (
        paths.guests_conf_dir / f"{name}{MOVED_SUFFIX}",
        paths.root_dir / f"{name}{MOVED_SUFFIX}",
    )


def keep_moved(host: HostConfig, name: str) -> dict[str, str]:
    """Put the moved guest ``name`` aside as NAME.moved (its configuration directory first, so
    it leaves every listing at once, then its root). Refused while it runs or unless a move
    holds it."""
    paths = host.paths
    directory, root = paths.guest_dir(check_guest_name(name)), paths.guest_root(name)
    kept_dir, kept_root = moved_paths(host, name)
    if directory.is_dir():
        if host.guest_conf(name).storage is StorageKind.LVM:
            raise UsageError("moving a guest off STORAGE=lvm is not supported yet")
        if moving_to(host, name) is None:
            raise StateError(f"guest {name} is not being moved: it is not put aside")
        if is_active(host, name):
            raise StateError(f"guest {name} runs here: it is not put aside")
        if kept_dir.exists():
            raise StateError(f"{kept_dir} exists already")
        directory.rename(kept_dir)
    if root.exists() and kept_dir.exists():
        root.rename(kept_root)
    host.forget(name)
    return {"conf": str(kept_dir), "root": str(kept_root)}


def drop_moved(host: HostConfig, name: str) -> dict[str, str]:
    """Remove what keep_moved put aside of ``name``: its snapshots, its root, then its
    directory."""
    kept_dir, kept_root = moved_paths(host, name)
    snapshots = host.paths.root_dir / SNAPSHOT_DIR
    for snapshot in sorted(snapshots.glob(f"{name}.*")) if snapshots.is_dir() else []:
        if is_subvolume(snapshot):
            delete_subvolume(snapshot)
    if kept_root.exists():
        if is_subvolume(kept_root):
            delete_subvolume(kept_root)
        else:
            shutil.rmtree(kept_root)
    if kept_dir.exists():
        shutil.rmtree(kept_dir)
    return {"conf": str(kept_dir), "root": str(kept_root)}
