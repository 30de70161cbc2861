"""A guest restored from an archive into the master's store (then put on a slave by vs-put, as
any stored copy), and single files extracted for an administrator. The archive's comment holds
the guest's configuration files; its root is extracted in the sandbox of
vstools.backup.repository, with numeric owners, into the store's partial copy, which becomes
the stored copy only once complete."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from vstools.backup.repository import Repository
from vstools.backup.slave import CONF_FILES
from vstools.config.guest import GuestConf
from vstools.errors import ConfigError, StateError, UsageError
from vstools.host.fsutil import atomic_write
from vstools.pool.store import Store


def archived_conf(repository: Repository, archive: str, guest: str) -> dict[str, str]:
    """The configuration files kept in ``archive``'s comment, guest.conf checked to parse."""
    comment = repository.info(archive).get("comment") or ""
    try:
        data = json.loads(comment)
        files = {k: v for k, v in data["conf"].items() if k in CONF_FILES and isinstance(v, str)}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise StateError(
            f"archive {archive} was not made by vs-backup (no configuration)"
        ) from None
    if data.get("guest") != guest:
        raise StateError(f"archive {archive} holds guest {data.get('guest')!r}, not {guest}")
    if "guest.conf" not in files:
        raise StateError(f"archive {archive} has no guest.conf")
    try:
        GuestConf.parse(f"{archive}:guest.conf", files["guest.conf"])
    except ConfigError as exc:
        raise StateError(f"the guest.conf of archive {archive} is invalid: {exc}") from None
    return files


def restore_to_store(repository: Repository, store: Store, guest: str, archive: str) -> Path:
    """Extract ``archive`` into the store as ``guest``'s copy (the previous copy replaced only
    once this one is complete); its path."""
    files = archived_conf(repository, archive, guest)
    partial = store.partial(guest)
    if partial.exists():
        shutil.rmtree(partial)  # a killed restore's, or a killed vs-get's: made anew
    store.prepare(guest)
    repository.extract(archive, partial / "root")
    for file, text in files.items():
        atomic_write(partial / "conf" / file, text, mode=0o644)
    return store.commit(guest)


def extract_files(repository: Repository, archive: str, paths: list[str], target: Path) -> Path:
    """Extract ``paths`` (as inside the guest: ``/etc/passwd`` or ``etc/passwd``) of
    ``archive`` into the directory ``target`` (made if missing, else it must be empty)."""
    wanted = []
    for path in paths:
        relative = path.lstrip("/")
        if not relative or any(part == ".." for part in relative.split("/")):
            raise UsageError(f"invalid path {path!r}: a path inside the guest")
        wanted.append(relative)
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    if any(target.iterdir()):
        raise UsageError(f"{target} is not empty: extract into a new or empty directory")
    repository.extract(archive, target, wanted)
    return target
