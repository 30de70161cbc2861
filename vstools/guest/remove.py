"""Removing a guest from this host for good, as ``lxc-destroy`` or ``pct destroy`` do: its root
(a directory, a btrfs subvolume or an LVM volume, with its snapshots), its configuration
directory, and what it left at run time (cgroup, records, monitor state). A running guest is
refused unless asked to stop it first.

Removal cannot be undone, so it is made resumable instead: the guest's configuration directory
is marked first (the guest disappears from every listing at once), then the rest goes, the
directory last. A removal that is killed halfway leaves the marked directory, and running it
again (or any vs-create) finishes it."""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass

from vstools.errors import NotFoundError, StateError, VSError
from vstools.guest.lifecycle import is_active
from vstools.guest.stop import clean_leftovers, has_leftovers, stop_guest
from vstools.host.fsutil import atomic_write, swap_file_of
from vstools.host.hostconfig import HostConfig
from vstools.names import check_guest_name
from vstools.paths import REMOVING_MARKER
from vstools.plan import Step
from vstools.storage.base import Storage
from vstools.storage.select import guest_storage, storage_for


@dataclass(frozen=True, slots=True)
class Removal:
    """What removing one guest takes, as steps (for --dry-run and the journal)."""

    name: str
    steps: list[Step]


def plan_remove(host: HostConfig, name: str, *, force: bool = False) -> Removal:
    """The steps that remove ``name``. StateError for a running guest (unless ``force``: it is
    stopped first), NotFoundError for one that is not here. A guest whose removal or creation
    was interrupted is finished off, whatever its files say."""
    paths = host.paths
    directory = paths.guest_dir(check_guest_name(name))
    root = paths.guest_root(name)
    if not directory.is_dir() and not root.exists() and not root.is_symlink():
        raise NotFoundError(f"no guest named {name} on this host")
    running = is_active(host, name)
    if running and not force:
        raise StateError(f"guest {name} is running: stop it first, or vs-remove --force stops it")
    storage = _storage_of(host, name)
    steps = []
    if running:
        steps.append(Step(f"stop {name}", lambda: stop_guest(host, name)))
    steps += [
        Step(f"mark {directory} as being removed", lambda: _mark(host, name)),
        Step(f"clean what {name} left at run time", lambda: _leftovers(host, name)),
        Step(
            f"remove the root filesystem {root} ({storage.kind})", lambda: storage.remove_root(name)
        ),
        Step(
            f"remove {name}'s run and monitor state",
            lambda: _remove_state(host, name),
        ),
        Step(f"remove {directory}", lambda: _remove_dir(host, name)),
    ]
    return Removal(name, steps)


def _storage_of(host: HostConfig, name: str) -> Storage:
    """The backend of the guest's root: its guest.conf's or, for a broken or half-made guest
    (a broken guest.conf must not keep a guest forever), create.conf's."""
    try:
        return guest_storage(host, host.guest_conf(name))
    except VSError:
        create = host.create()
        return storage_for(host.paths, create.storage, lvm_vg=create.lvm_vg, lvm_fs=create.lvm_fs)


def _mark(host: HostConfig, name: str) -> None:
    directory = host.paths.guest_dir(name)
    if directory.is_dir():
        atomic_write(directory / REMOVING_MARKER, "being removed by vs-remove\n")
    host.forget(name)


def _leftovers(host: HostConfig, name: str) -> None:
    if has_leftovers(host, name):
        clean_leftovers(host, name)


def _remove_state(host: HostConfig, name: str) -> None:
    run_dir = host.paths.guest_run_dir(name)
    if run_dir.is_dir():
        shutil.rmtree(run_dir)
    figures = host.paths.monitor_figures_dir() / f"{name}.json"
    for path in (str(figures), swap_file_of(figures)):  # the monitor's state and its swap file
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _remove_dir(host: HostConfig, name: str) -> None:
    directory = host.paths.guest_dir(name)
    if directory.is_dir():
        shutil.rmtree(directory)
