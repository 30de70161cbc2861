"""The master's borg repository (BACKUP_DIR, default STATE_DIR/backup): encrypted (repokey,
the passphrase in BACKUP_PASSPHRASE_FILE, readable by root only), written by the slaves over SSH
through a forced append-only ``borg serve`` and pruned, compacted, verified and read by the
master alone.

Reading an archive back (a restore, single files) is sandboxed: borg 1.2 extracts an item
``x/f`` through a symlink ``x`` that the same archive made, so an archive forged by a
compromised slave (it holds the passphrase) could write anywhere the extracting process can.
borg extract therefore runs under bubblewrap with the whole file system read-only but the
destination, the repository read-only too (``--bypass-lock``: nothing else may write it, as
the master holds its own lock while reading), and a throwaway borg base directory."""

from __future__ import annotations

import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vstools.backup.borg import (
    SERVE_MARK,
    BorgError,
    Listed,
    borg_env,
    build_authorized_line,
    log_messages,
    parse_list,
    run_borg,
)
from vstools.backup.retention import KeepPolicy, pruned_archives
from vstools.errors import NotFoundError, StateError
from vstools.host.authkeys import set_marked
from vstools.host.fsutil import atomic_write
from vstools.host.hostconfig import HostConfig
from vstools.host.run import which

DERIVED = ("index", "hints", "integrity")  # borg's files rebuilt from the segments


@dataclass(frozen=True, slots=True)
class Repository:
    """The repository at ``path``; borg's cache and security records under ``base_dir``."""

    path: Path
    passphrase_file: Path
    base_dir: Path

    @classmethod
    def of(cls, host: HostConfig) -> Repository:
        """The repository vs-tools.conf names (BACKUP_DIR, default STATE_DIR/backup)."""
        settings = host.settings
        path = Path(settings.backup_dir) if settings.backup_dir else host.paths.state_dir / "backup"
        return cls(path, Path(settings.backup_passphrase_file), host.paths.state_dir / "borg")

    def exists(self) -> bool:
        """Whether a borg repository is there."""
        return (self.path / "config").is_file()

    def require(self) -> None:
        """NotFoundError (with what to do) when there is no repository yet."""
        if not self.exists():
            raise NotFoundError(f"no borg repository at {self.path}: make it with vs-backup --init")

    def passphrase(self) -> str:
        """The passphrase, from a file that only root may read (StateError otherwise)."""
        try:
            info = self.passphrase_file.lstat()
        except FileNotFoundError:
            raise NotFoundError(
                f"no passphrase file {self.passphrase_file} (BACKUP_PASSPHRASE_FILE):"
                " vs-backup --init makes one"
            ) from None
        if not stat.S_ISREG(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o077:
            raise StateError(
                f"{self.passphrase_file} must be a regular file of root's, mode 0600 or"
                f" stricter (it is {oct(stat.S_IMODE(info.st_mode))}, uid {info.st_uid})"
            )
        text = self.passphrase_file.read_text().strip()
        if not text:
            raise StateError(f"{self.passphrase_file} is empty")
        return text

    def env(self) -> dict[str, str]:
        """borg's environment for the master's own runs."""
        self.base_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return borg_env(self.base_dir, self.passphrase())

    def borg(self, argv: list[str], *, what: str, **kwargs: Any) -> Any:
        """Run borg on this repository as the master."""
        return run_borg(argv, self.env(), what=what, **kwargs)

    # -- making it ---------------------------------------------------------------------------

    def init(self) -> list[str]:
        """Make the passphrase file (if missing: 32 random bytes) and the repository (if
        missing); what was made, in words."""
        made = []
        if not self.passphrase_file.exists():
            self.passphrase_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            atomic_write(self.passphrase_file, secrets.token_urlsafe(32) + "\n", mode=0o600)
            made.append(f"passphrase {self.passphrase_file}")
        if not self.exists():
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.borg(["init", "--encryption=repokey-blake2", str(self.path)],
                      what=f"make the repository {self.path}")  # fmt: skip
            made.append(f"repository {self.path}")
        return made

    # -- reading -------------------------------------------------------------------------------

    def archives(self, guest: str | None = None) -> list[Listed]:
        """The archives (of ``guest``), oldest first, checkpoints included."""
        argv = ["list", "--json"]
        if guest is not None:
            argv += ["--glob-archives", f"{guest}.*"]
        return parse_list(self.borg([*argv, str(self.path)], what="list the archives").stdout)

    def complete(self, guest: str | None = None) -> list[Listed]:
        """The complete archives (of ``guest``): checkpoints left out."""
        return [a for a in self.archives(guest) if not a.checkpoint]

    def info(self, archive: str) -> dict[str, Any]:
        """borg info --json of one archive (its comment, sizes, times)."""
        import json

        result = self.borg(["info", "--json", f"{self.path}::{archive}"], what=f"read {archive}")
        data = json.loads(result.stdout)
        archives = data.get("archives") or [{}]
        found: dict[str, Any] = archives[0]
        return found

    # -- retention, verification ---------------------------------------------------------------

    def prune(self, guest: str, policy: KeepPolicy, *, dry_run: bool) -> list[str]:
        """Apply ``policy`` to ``guest``'s archives: those removed (or that would be)."""
        argv = ["prune", "--list", "--glob-archives", f"{guest}.*", *policy.prune_args()]
        if dry_run:
            argv.append("--dry-run")
        result = self.borg([*argv, str(self.path)], what=f"prune the archives of {guest}")
        return pruned_archives(log_messages(result.stderr))

    def compact(self) -> None:
        """Free the space of removed archives (borg compact)."""
        self.borg(["compact", str(self.path)], what="compact the repository")

    def check(self, *, verify_data: bool) -> tuple[bool, str]:
        """borg check of the repository and every archive (``verify_data``: read and decrypt
        every chunk too): whether it passed, and borg's error messages."""
        argv = ["check", *(["--verify-data"] if verify_data else []), str(self.path)]
        try:
            self.borg(argv, what="verify the repository", warnings_ok=False)
        except BorgError as exc:
            return False, str(exc)
        return True, ""

    # -- restoring -----------------------------------------------------------------------------

    def extract(self, archive: str, target: Path, paths: list[str] = ()) -> None:  # type: ignore[assignment]
        """Extract ``archive`` (or only ``paths`` of it) into the directory ``target``, keeping
        numeric owners, sparse files, ACLs, xattrs, in the sandbox the module's doc describes.
        Any warning is a failure: a restore is complete or it is not one."""
        bwrap = which("bwrap")
        if bwrap is None:
            raise StateError("bubblewrap (bwrap) is not installed: archives are only extracted"
                             " in its sandbox (apt-get install bubblewrap)")  # fmt: skip
        target = target.resolve()
        # No fresh /proc: the host's, read-only like everything else (a writable /proc/sys
        # reached through a forged symlink would change the host's kernel settings).
        sandbox = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--tmpfs", "/tmp",
                   "--ro-bind", str(self.path), str(self.path),
                   "--bind", str(target), str(target), "--chdir", str(target),
                   "--unshare-pid", "--unshare-ipc", "--die-with-parent", "--"]  # fmt: skip
        env = borg_env(Path("/tmp/borg"), self.passphrase())
        argv = ["extract", "--bypass-lock", "--numeric-ids", "--sparse",
                f"{self.path}::{archive}", *paths]  # fmt: skip
        run_borg(argv, env, what=f"extract {archive}", prefix=sandbox, warnings_ok=False)

    # -- rolling back what a slave's key did -------------------------------------------------

    def last_segment(self) -> int:
        """The newest segment file's number: borg's id of the last committed transaction."""
        numbers = [
            int(file.name)
            for directory in (self.path / "data").iterdir()
            for file in directory.iterdir()
            if file.name.isdigit()
        ]
        return max(numbers, default=0)

    def rollback(self, transaction: int, aside: Path) -> list[str]:
        """Put the repository back to ``transaction``: every newer segment and borg's index
        files moved into ``aside`` (kept, not deleted); borg rebuilds its index from the
        segments left, then borg check verifies them. The files moved.

        No slave may write meanwhile: the repository is renamed for the duration (a slave's
        forced command names its path, so it cannot open it), and refused if a borg holds its
        lock (``borg with-lock`` would not do: it commits a transaction of its own)."""
        hidden = self.path.with_name(f".{self.path.name}.rolling-back")
        self.path.rename(hidden)
        try:
            if any((hidden / lock).exists() for lock in ("lock.exclusive", "lock.roster")):
                raise StateError(f"{self.path} is in use (a borg holds its lock): try again later")
            moved = _set_aside(hidden, transaction, aside)
        finally:
            hidden.rename(self.path)
        ok, why = self.check(verify_data=False)
        if not ok:
            raise StateError(f"rolled back to transaction {transaction}, but: {why}")
        return [str(path) for path in moved]

    # -- the slaves' keys ----------------------------------------------------------------------

    def authorize(self, host: HostConfig, slave: str, public_key: str) -> bool:
        """Let ``slave``'s key write to this repository, append-only, through the master's
        authorized_keys (SSH_AUTHORIZED_KEYS); whether the file changed."""
        borg = which("borg") or "/usr/bin/borg"
        line = build_authorized_line(borg, self.path, public_key, slave)
        keys = Path(host.settings.ssh_authorized_keys)
        return set_marked(keys, f"{SERVE_MARK}{slave}", line, lock_dir=host.paths.run_dir / "locks")

    def url(self, master: str) -> str:
        """The repository as a slave reaches it over SSH."""
        return f"ssh://root@{master}{self.path}"


def _set_aside(repository: Path, transaction: int, aside: Path) -> list[Path]:
    segments = [f for d in (repository / "data").iterdir() for f in d.iterdir() if f.name.isdigit()]
    if not any(int(f.name) == transaction for f in segments):
        raise StateError(f"{repository} has no transaction {transaction} to roll back to")
    newer = [f for f in segments if int(f.name) > transaction]
    if not newer:
        return []
    derived = [p for p in repository.iterdir() if p.name.split(".")[0] in DERIVED]
    aside.mkdir(mode=0o700, parents=True, exist_ok=True)
    moved = []
    for path in [*sorted(newer, key=lambda f: int(f.name)), *derived]:
        target = aside / f"{path.parent.name}-{path.name}" if path in newer else aside / path.name
        path.rename(target)
        moved.append(target)
    return moved


def master_known_hosts(host: HostConfig, master: str) -> str:
    """The known_hosts line of the master's SSH host key (BACKUP_HOST_KEY), for the slaves."""
    path = Path(host.settings.backup_host_key)
    try:
        words = path.read_text().split()
    except FileNotFoundError:
        raise NotFoundError(f"no host key {path} (BACKUP_HOST_KEY): the slaves could not"
                            " check that they reach the master") from None  # fmt: skip
    if len(words) < 2:
        raise StateError(f"{path} is no SSH public key")
    return f"{master} {words[0]} {words[1]}"


def master_name(host: HostConfig) -> str:
    """How slaves reach the master: BACKUP_MASTER, else its HOSTNAME, else the kernel's."""
    import socket

    return host.settings.backup_master or host.settings.hostname or socket.getfqdn()


def check_owner_only(path: Path) -> None:
    """Refuse a directory others could read (the repository holds every guest's files)."""
    if path.exists() and os.stat(path).st_mode & 0o077:
        os.chmod(path, 0o700)
