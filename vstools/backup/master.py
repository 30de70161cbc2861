"""vs-backup on the master: each guest of backup.conf archived by the slave that runs it (see
vstools.backup.slave), one after the other; then, only for a guest whose new archive is
complete, retention (borg prune) and, once for the run, borg compact. A failed backup never
prunes (D10): the archives it would have pruned are all that is left of that guest.

Before any prune or compaction the master compares the repository with the archives it
recorded: a slave's key is append-only, but borg 1.2's append-only mode only keeps a deleted
archive's data until the next compaction. An archive the master knows that vanished or changed
therefore stops every prune and compaction (exit 4) until an administrator looked
(docs/commands/vs-backup.md says how to roll the repository back)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vstools.backup.borg import forget_repositories
from vstools.backup.records import Records
from vstools.backup.repository import Repository, master_known_hosts, master_name
from vstools.backup.retention import KeepPolicy
from vstools.config.pool import BackupConf, BackupEntry, parse_backup
from vstools.errors import NotFoundError, StateError, UsageError, VSError
from vstools.host.hostconfig import HostConfig, load_optional
from vstools.host.journal import log
from vstools.pool.slaves import Pool

Say = Callable[[str], None]


def failpoint(env: dict[str, str], step: str) -> None:
    """VS_FAILPOINT=backup:STEP (tests only) kills the process at ``step``, as a power cut."""
    log.info("step: backup: %s", step)
    if env.get("VS_FAILPOINT") == f"backup:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class Outcome:
    """One guest's backup: its line, or why it failed."""

    name: str
    host: str | None
    mode: str
    archive: str = ""
    original_bytes: int = 0
    deduplicated_bytes: int = 0
    seconds: float = 0.0
    how: str = ""
    held_s: float | None = None
    pruned: list[str] = field(default_factory=list)
    error: VSError | None = None

    def fields(self) -> dict[str, Any]:
        """The output line's fields."""
        held = ""
        if self.how in ("stopped", "frozen") and self.held_s is not None:
            held = f"{self.how} {self.held_s:.2f} s"
        elif self.how:
            held = {"snapshot": "from a snapshot", "offline": "not running"}.get(self.how, "")
        return {
            "host": self.host or "",
            "vserver": self.name,
            "archive": self.archive if self.error is None else "FAILED",
            "mb": round(self.original_bytes / (1 << 20), 1),
            "dedup_mb": round(self.deduplicated_bytes / (1 << 20), 1),
            "seconds": round(self.seconds, 2),
            "held": held,
        }


def backup_conf(host: HostConfig) -> BackupConf:
    """The master's backup.conf (empty when there is none)."""
    path = host.paths.etc_file(BackupConf.FILE_NAME)
    return load_optional(path, parse_backup, BackupConf(()))


def where_guests_run(pool: Pool) -> dict[str, str]:
    """Each guest of the pool and the slave holding it, asked now (a slave that does not
    answer holds nothing here: its guests fail with "not found")."""
    found: dict[str, str] = {}
    for answer in pool.fan_out(lambda remote: remote.call("guests")):
        for name in answer.value or []:
            found.setdefault(name, answer.host)
    return found


def selected_entries(
    conf: BackupConf, placed: dict[str, str], *, name: str | None, host: str | None
) -> list[BackupEntry]:
    """The entries of backup.conf to back up now: all, or ``name``'s, or those on ``host``."""
    entries = list(conf.entries)
    if name is not None:
        entries = [e for e in entries if e.name == name]
        if not entries:
            raise NotFoundError(f"guest {name} is not in {conf.path or 'backup.conf'}")
    if host is not None:
        entries = [e for e in entries if placed.get(e.name) == host]
    return entries


def secrets_json(pool: Pool, repository: Repository) -> str:
    """What a slave needs for one backup, as the JSON it reads on stdin."""
    master = master_name(pool.host)
    return json.dumps(
        {
            "repository": repository.url(master),
            "passphrase": repository.passphrase(),
            "known_hosts": master_known_hosts(pool.host, master),
        }
    )


def check_history(repository: Repository, records: Records) -> None:
    """StateError when an archive the master recorded is gone from the repository or has
    another id: something other than the master removed or rewrote it."""
    present = {a.name: a.id for a in repository.archives()}
    vanished = [n for n in records.known() if n not in present]
    changed = [n for n, i in records.known().items() if n in present and i and present[n] != i]
    if vanished or changed:
        parts = []
        if vanished:
            parts.append(f"vanished: {', '.join(sorted(vanished))}")
        if changed:
            parts.append(f"rewritten: {', '.join(sorted(changed))}")
        raise StateError(
            f"archives the master made are no longer as it made them ({'; '.join(parts)}):"
            " no prune or compaction until this is looked into (a slave's key can only append,"
            " and the data is still there: vs-backup --rollback puts the repository back as"
            " the master last saw it; vs-backup --accept if an administrator removed them)"
        )
    records.good(repository.last_segment())


def accept_history(repository: Repository, records: Records) -> list[str]:
    """An administrator removed archives on purpose (borg delete on the master): the master
    stops expecting every archive it recorded that is gone, and the repository as it is now
    becomes the state a rollback returns to. The archives no longer expected."""
    present = {a.name: a.id for a in repository.archives()}
    gone = [n for n, i in records.known().items() if n not in present or (i and present[n] != i)]
    records.pruned(gone)
    check_history(repository, records)
    return gone


def backup_one(
    pool: Pool,
    repository: Repository,
    records: Records,
    entry: BackupEntry,
    host: str,
    *,
    env: dict[str, str],
) -> Outcome:
    """Have ``host`` archive ``entry``'s guest into the repository; its outcome."""
    outcome = Outcome(entry.name, host, str(entry.mode))
    remote = pool.remote(host)
    key = remote.call("backup_key")
    if repository.authorize(pool.host, host, str(key)):
        log.info("step: backup: %s's key may append to %s", host, repository.path)
    failpoint(env, "archive")
    answer = remote.call("backup_guest", entry.name, str(entry.mode),
                         input=secrets_json(pool, repository), timeout_s=None)  # fmt: skip
    outcome.archive = str(answer["archive"])
    outcome.original_bytes = int(answer["original_bytes"])
    outcome.deduplicated_bytes = int(answer["deduplicated_bytes"])
    outcome.seconds = float(answer["seconds"])
    outcome.how = str(answer["how"])
    outcome.held_s = answer.get("held_s")
    ids = {a.name: a.id for a in repository.archives(entry.name)}
    if outcome.archive not in ids:
        raise StateError(f"{host} reported archive {outcome.archive}, the repository has not it")
    failpoint(env, "record")
    records.succeeded(entry.name, host, outcome.archive, ids[outcome.archive])
    return outcome


def run_backups(
    pool: Pool,
    repository: Repository,
    records: Records,
    *,
    name: str | None,
    host: str | None,
    dry_run: bool,
    say: Say,
    env: dict[str, str],
) -> list[Outcome]:
    """Back up the selected guests of backup.conf, then apply retention to each guest whose new
    archive is complete (all of it with ``dry_run``: only what would happen is said)."""
    repository.require()
    if host is not None:
        pool.slave(host)  # UsageError for a host that is no slave
    placed = where_guests_run(pool)
    entries = selected_entries(backup_conf(pool.host), placed, name=name, host=host)
    policy = KeepPolicy.of_settings(pool.host.settings)
    outcomes: list[Outcome] = []
    for entry in entries:
        where = placed.get(entry.name)
        if dry_run:
            say(f"would: back up {entry.name} ({entry.mode}) on {where or 'no slave'}")
            if repository.complete(entry.name):
                for archive in repository.prune(entry.name, policy, dry_run=True):
                    say(f"would: prune {archive} ({policy.describe()})")
            continue
        try:
            if where is None:
                raise NotFoundError(f"no slave holds guest {entry.name}")
            outcomes.append(backup_one(pool, repository, records, entry, where, env=env))
        except VSError as exc:
            log.info("step: backup of %s failed: %s", entry.name, exc)
            records.failed(entry.name, where, str(exc))
            outcomes.append(Outcome(entry.name, where, str(entry.mode), error=exc))
    done = [o for o in outcomes if o.error is None]
    if done:
        failpoint(env, "prune")
        check_history(repository, records)
        for outcome in done:
            outcome.pruned = repository.prune(outcome.name, policy, dry_run=False)
            records.pruned(outcome.pruned)
        if any(o.pruned for o in done):
            failpoint(env, "compact")
            repository.compact()
            records.good(repository.last_segment())
    return outcomes


def prune_only(
    repository: Repository, records: Records, policy: KeepPolicy, guests: list[str],
    *, dry_run: bool,
) -> dict[str, list[str]]:  # fmt: skip
    """Retention alone (vs-backup --prune): per guest, what was (would be) removed."""
    repository.require()
    if not dry_run:
        check_history(repository, records)
    removed = {}
    for guest in guests:
        if not repository.complete(guest):
            continue
        removed[guest] = repository.prune(guest, policy, dry_run=dry_run)
        if not dry_run:
            records.pruned(removed[guest])
    if not dry_run and any(removed.values()):
        repository.compact()
        records.good(repository.last_segment())
    return removed


def rollback(
    pool: Pool, repository: Repository, records: Records, *, dry_run: bool, say: Say
) -> list[str]:
    """Put the repository back to the last transaction at which it was as the master made it
    (after a slave's key removed or rewrote an archive); the archives made since then are
    gone too and no longer expected. The files set aside."""
    repository.require()
    good = records.last_good()
    if good is None:
        raise StateError("the master has not verified this repository yet: nothing to roll back to")
    transaction, when = good
    if dry_run:
        say(f"would: roll {repository.path} back to transaction {transaction} ({timestamp(when)})")
        return []
    aside = repository.path.parent / f"{repository.path.name}.rolled-back.{int(time.time())}"
    moved = repository.rollback(transaction, aside)
    # borg refuses a repository older than it last saw: every host forgets what it saw.
    forget_repositories(repository.base_dir)
    for answer in pool.fan_out(lambda remote: remote.call("backup_forget")):
        if answer.error is not None:
            say(f"{answer.host}: run vs-fonctions backup_forget there: {answer.error}")
    say(f"rolled back to transaction {transaction}: {len(moved)} files set aside in {aside}")
    for name in records.rolled_back(when):
        say(f"rolled back with it: {name}")
    check_history(repository, records)
    return moved


def latest_archive(repository: Repository, guest: str, archive: str | None) -> str:
    """``archive`` (checked to be ``guest``'s and complete) or ``guest``'s newest complete one."""
    names = [a.name for a in repository.complete(guest)]
    if archive is None:
        if not names:
            raise NotFoundError(f"the repository has no archive of guest {guest}")
        return names[-1]
    if archive not in names:
        raise NotFoundError(f"the repository has no complete archive {archive} of guest {guest}")
    return archive


def overdue(records: Records, conf: BackupConf, max_age_h: int, now: float) -> list[str]:
    """The guests of backup.conf without a successful backup for longer than ``max_age_h``
    whose overdue alert was not mailed yet."""
    late = []
    for entry in conf.entries:
        record = records.guest(entry.name)
        last = record.last_success
        if (last is None or now - last > max_age_h * 3600) and record.overdue_mailed is None:
            late.append(entry.name)
    return late


def timestamp(seconds: float | None) -> str:
    """A recorded time as ISO text in UTC (empty when never)."""
    if seconds is None:
        return ""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def check_usage(*, name: str | None, archive: str | None, paths: list[str]) -> None:
    """--extract needs --name, --archive and at least one PATH."""
    if name is None or archive is None or not paths:
        raise UsageError("--extract needs --name, --archive, --to and the PATHs to restore")
