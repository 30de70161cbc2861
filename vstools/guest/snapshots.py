"""vs-snapshot: named snapshots of a guest's root an administrator can list, revert to and
delete, on btrfs (read-only subvolumes under ROOT_DIR/.snapshots) and lvm (``lvcreate -s``
volumes); ``dir`` has none and says so. The toolkit's own snapshots (a backup's, a copy's, a
clone's) are neither listed nor accepted as labels.

A revert needs the guest stopped: a running guest is stopped first and started again after,
also when the revert fails (then its root is as it was: the new root is made beside the old
one and swapped in by renames)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from vstools.errors import StateError, UsageError
from vstools.guest.lifecycle import is_active
from vstools.guest.start import start_guest
from vstools.guest.stop import stop_guest
from vstools.host.hostconfig import HostConfig
from vstools.plan import Step, apply_steps
from vstools.storage.base import Storage, check_tag
from vstools.storage.select import guest_storage

INTERNAL_TAGS = frozenset({"vsbackup", "vspool", "clone"})  # the toolkit's own snapshots


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """One snapshot of a guest, as vs-snapshot lists it."""

    vserver: str
    label: str
    path: str


def check_label(label: str) -> str:
    """A label follows the guest-name rule and is none of the toolkit's own tags."""
    check_tag(label)
    if label in INTERNAL_TAGS:
        raise UsageError(f"snapshot label {label!r} is reserved for the toolkit's own snapshots")
    return label


def default_label(now: float) -> str:
    """The label of a snapshot made without one: ``sYYYYMMDDTHHMMSSZ`` (UTC)."""
    return time.strftime("s%Y%m%dT%H%M%SZ", time.gmtime(now))


def _storage(host: HostConfig, name: str) -> Storage:
    return guest_storage(host, host.guest_conf(name))


def list_snapshots(host: HostConfig, name: str) -> list[SnapshotInfo]:
    """The guest's snapshots (the toolkit's own left out), by label."""
    storage = _storage(host, name)
    return [
        SnapshotInfo(name, tag, str(storage.snapshot_path(name, tag)))
        for tag in storage.snapshot_tags(name)
        if tag not in INTERNAL_TAGS
    ]


def create_steps(host: HostConfig, name: str, label: str) -> list[Step]:
    """Steps that take the read-only snapshot ``label`` (StateError when it exists)."""
    check_label(label)
    storage = _storage(host, name)
    if label in storage.snapshot_tags(name):
        raise StateError(f"guest {name} has a snapshot {label} already")
    return storage.snapshot_steps(name, label)[0]


def delete_steps(host: HostConfig, name: str, label: str) -> list[Step]:
    """Steps that delete the snapshot ``label`` (StateError when there is none)."""
    storage = _storage(host, name)
    if check_label(label) not in storage.snapshot_tags(name):
        raise StateError(f"guest {name} has no snapshot {label}")
    snapshot = storage.snapshot_steps(name, label)[1]
    return storage.remove_snapshot_steps(snapshot)


def revert_steps(host: HostConfig, name: str, label: str) -> list[Step]:
    """Steps that make the guest's root what snapshot ``label`` holds (the guest stopped)."""
    storage = _storage(host, name)
    check_label(label)
    return storage.revert_steps(name, label)


def revert(host: HostConfig, name: str, label: str) -> bool:
    """Revert ``name`` to snapshot ``label``: stopped first if it runs, started again after
    (also when the revert failed). Whether it was restarted."""
    steps = revert_steps(host, name, label)
    running = is_active(host, name)
    if running:
        stop_guest(host, name)
    try:
        apply_steps(steps)
    finally:
        if running:
            start_guest(host, name)
    return running


def snapshot_path(host: HostConfig, name: str, label: str) -> Path:
    """Where snapshot ``label`` of the guest is read."""
    return _storage(host, name).snapshot_path(name, label)
