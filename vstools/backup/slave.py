"""The slave's side of vs-backup: one guest archived by borg, on the host where it lives, into
the master's repository over SSH (the slave's own key, which the master restricts to an
append-only ``borg serve`` of that repository).

What borg reads is a still image of the guest:

- ``cold``: a running guest is stopped, archived, and started again, also when the archive
  fails (D12); a stopped guest is archived as it is;
- ``hot`` on btrfs and lvm: a read-only snapshot, always removed afterwards;
- ``hot`` on dir: the guest is frozen (cgroup freezer) while borg reads it, and the frozen time
  is reported. A frozen guest cannot change or race anything borg reads (nor swap a directory
  for a symlink under it); borg never follows a symlink and never opens a device or a FIFO
  (no --read-special). Thawed always, also when borg fails.

The master passes what the slave needs on stdin (never on a command line, which every local
user can read): the repository's URL, its passphrase, and the master's host key. A slave thus
holds the passphrase while it writes (borg encrypts on the client), which is the price of
client-side encryption; its key can still only append."""

from __future__ import annotations

import contextlib
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vstools.backup.borg import Created, archive_name, borg_env, parse_created, run_borg
from vstools.config.pool import BackupMode
from vstools.config.values import StorageKind
from vstools.errors import StateError, UsageError, VSError
from vstools.guest.facts import hostname
from vstools.guest.lifecycle import freeze_guest, guest_status, is_active
from vstools.guest.start import start_guest
from vstools.guest.stop import stop_guest
from vstools.host.hostconfig import HostConfig
from vstools.host.journal import log
from vstools.host.run import run
from vstools.host.ssh import SshOptions, ssh_option_args
from vstools.plan import apply_steps
from vstools.storage.base import Snapshot, Storage
from vstools.storage.select import guest_storage

SNAPSHOT_TAG = "vsbackup"  # the snapshot a hot backup reads (ROOT_DIR/.snapshots/NAME.vsbackup)
CONF_FILES = ("guest.conf", "firewall.conf", "monitor.conf")
COMMENT_VERSION = 1


@dataclass(frozen=True, slots=True)
class Secrets:
    """What the master hands a slave on stdin for one backup."""

    repository: str  # ssh://master/path
    passphrase: str
    known_hosts: str  # the master's host key, as a known_hosts line

    @classmethod
    def parse(cls, text: str) -> Secrets:
        """The master's JSON object; UsageError when it is not one."""
        try:
            data = json.loads(text)
            return cls(str(data["repository"]), str(data["passphrase"]), str(data["known_hosts"]))
        except (ValueError, KeyError, TypeError):
            raise UsageError("expected the repository, passphrase and host key on stdin") from None


def borg_dir(host: HostConfig) -> Path:
    """borg's base directory on this host (its cache and security records): STATE_DIR/borg."""
    path = host.paths.state_dir / "borg"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def backup_public_key(host: HostConfig) -> str:
    """This slave's public key for the master's repository (BACKUP_SSH_KEY), made on first use
    (ed25519, no passphrase: backups run unattended)."""
    key = Path(host.settings.backup_ssh_key)
    if not key.exists():
        key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"vs-backup@{hostname(host)}",
             "-f", str(key)])  # fmt: skip
    return Path(f"{key}.pub").read_text().strip()


def conf_comment(host: HostConfig, name: str, mode: BackupMode, storage: StorageKind) -> str:
    """The archive's comment: the guest's configuration files (so a restore rebuilds the guest
    from the archive alone) and how it was taken."""
    directory = host.paths.guest_dir(name)
    files = {}
    for file in CONF_FILES:
        with contextlib.suppress(FileNotFoundError):
            files[file] = (directory / file).read_text()
    return json.dumps(
        {
            "vstools": COMMENT_VERSION,
            "guest": name,
            "host": hostname(host),
            "mode": str(mode),
            "storage": str(storage),
            "conf": files,
        },
        sort_keys=True,
    )


@dataclass
class Taken:
    """What one guest's backup did, for the master's line."""

    created: Created
    how: str  # "stopped", "frozen", "snapshot", "offline" (not running)
    held_s: float | None = None  # stopped or frozen time


@contextlib.contextmanager
def _known_hosts(host: HostConfig, line: str) -> Iterator[str]:
    top = host.paths.run_dir / "backup"
    top.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=top, prefix="known_hosts.", delete=True) as file:
        file.write(line.strip() + "\n")
        file.flush()
        yield file.name


def backup_guest(host: HostConfig, name: str, mode: BackupMode, secrets: Secrets) -> Taken:
    """Archive ``name`` into the master's repository as NAME.<UTC time>, hot or cold (see the
    module's doc); the guest is always as it was afterwards (running again, thawed, its
    snapshot removed), also when borg fails."""
    conf = host.guest_conf(name)
    storage = guest_storage(host, conf)
    archive = archive_name(name, time.time())
    # borg expands {placeholders} in a comment: the JSON's braces are doubled to stay braces.
    comment = conf_comment(host, name, mode, storage.kind).replace("{", "{{").replace("}", "}}")
    key = host.settings.backup_ssh_key
    if not Path(key).exists():
        raise StateError(f"no backup key {key} on this host: the master makes it (vs-backup)")
    with _known_hosts(host, secrets.known_hosts) as known:
        options = SshOptions(
            key=key, known_hosts=known, connect_timeout_s=host.settings.ssh_timeout_s
        )
        rsh = shlex.join(["ssh", *ssh_option_args(options)])
        env = borg_env(borg_dir(host), secrets.passphrase, rsh=rsh)
        argv = ["create", "--json", "--numeric-ids", "--compression", "zstd,3",
                "--comment", comment, f"{secrets.repository}::{archive}", "."]  # fmt: skip
        with still_image(host, name, mode, storage) as (view, taken):
            result = run_borg(argv, env, what=f"archive {name}", cwd=str(view))
            taken.created = parse_created(result.stdout)
    return taken


@contextlib.contextmanager
def still_image(
    host: HostConfig, name: str, mode: BackupMode, storage: Storage
) -> Iterator[tuple[Path, Taken]]:
    """A view of ``name``'s root that does not change while it is read, and the record of how
    it was held; the guest put back as it was when the block ends, whatever happened in it."""
    taken = Taken(Created("", 0, 0, 0, 0, 0.0), "offline")
    if not is_active(host, name):
        with stopped_view(storage, name) as view:
            yield view, taken
        return
    if mode is BackupMode.COLD:
        taken.how = "stopped"
        log.info("step: backup: stop %s", name)
        stop_guest(host, name)
        held = time.monotonic()
        try:
            with stopped_view(storage, name) as view:
                yield view, taken
        finally:
            taken.held_s = time.monotonic() - held
            _start_again(host, name)
        return
    if storage.kind is StorageKind.DIR:
        taken.how = "frozen"
        already = guest_status(host, name).frozen  # frozen by an administrator: left so
        log.info("step: backup: freeze %s", name)
        freeze_guest(host, name)
        held = time.monotonic()
        try:
            yield storage.root(name), taken
        finally:
            if not already:
                freeze_guest(host, name, thaw=True)
            taken.held_s = time.monotonic() - held
        return
    taken.how = "snapshot"
    snapshot = _fresh_snapshot(storage, name)
    try:
        yield snapshot.path, taken
    finally:
        storage.remove_snapshot(snapshot)


@contextlib.contextmanager
def stopped_view(storage: Storage, name: str) -> Iterator[Path]:
    """Where a stopped guest's files are read: its root in place (dir, btrfs), or on lvm, whose
    volume is mounted only while the guest runs (its mount point is then empty), a read-only
    snapshot of the volume, removed afterwards."""
    if storage.kind is StorageKind.LVM:
        _drop_stale(storage, name)
    steps, view, drop = storage.read_view(name, SNAPSHOT_TAG)
    apply_steps(steps)
    try:
        yield view
    finally:
        apply_steps(drop)


def _drop_stale(storage: Storage, name: str) -> None:
    stale = storage.snapshot_steps(name, SNAPSHOT_TAG)[1]
    if stale.path.exists() or stale.volume:
        with contextlib.suppress(VSError, OSError):
            storage.remove_snapshot(stale)  # what a killed backup left: taken anew


def _fresh_snapshot(storage: Storage, name: str) -> Snapshot:
    _drop_stale(storage, name)
    log.info("step: backup: snapshot %s", name)
    return storage.create_snapshot(name, SNAPSHOT_TAG)


def _start_again(host: HostConfig, name: str) -> None:
    log.info("step: backup: start %s again", name)
    try:
        start_guest(host, name)
    except VSError as exc:
        raise StateError(f"guest {name} was stopped for its backup and did not start again: {exc}"
                         ) from exc  # fmt: skip


def taken_json(taken: Taken) -> dict[str, Any]:
    """A backup's record as the slave answers it."""
    created = taken.created
    return {
        "archive": created.archive,
        "original_bytes": created.original_bytes,
        "compressed_bytes": created.compressed_bytes,
        "deduplicated_bytes": created.deduplicated_bytes,
        "files": created.files,
        "seconds": created.seconds,
        "how": taken.how,
        "held_s": taken.held_s,
    }


def read_secrets_from_stdin() -> Secrets:
    """The master's secrets, read from this process's stdin (vs-fonctions over SSH)."""
    return Secrets.parse(sys.stdin.read(1 << 16))
