"""borg's command lines, environment and answers. borg has no public Python API: it is driven
through its CLI (``--json`` for results, ``--log-json`` for messages), through vstools.host.run
like every other program. Pure builders first (``build_*``), then ``run_borg``.

Every borg of the toolkit runs with its own BORG_BASE_DIR under STATE_DIR (cache, keys of the
security checks), never root's home, and never asks: a relocated or unknown repository is
refused, as borg does when it cannot ask."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vstools.errors import HostError, UsageError
from vstools.host.authkeys import restricted_line
from vstools.host.run import Result, run
from vstools.names import check_guest_name

BORG_WARNING = 1  # borg 1.2: 0 success, 1 warning (the archive is complete), 2 error
SERVE_MARK = "vs-backup:"  # the comment of a slave's key in the master's authorized_keys
CHECKPOINT = ".checkpoint"  # borg's name for what an interrupted create left


class BorgError(HostError):
    """borg failed: the operation, borg's exit status and its error messages."""


def borg_env(base_dir: Path, passphrase: str | None, *, rsh: str | None = None) -> dict[str, str]:
    """The environment of a borg run: its own base directory, the passphrase (the process's
    environment is readable by root only), ssh for a remote repository, and every question
    answered "no" in advance (an unattended borg never waits for a terminal)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "HOME": str(base_dir),
        "LANG": "C.UTF-8",
        "BORG_BASE_DIR": str(base_dir),
        "BORG_RELOCATED_REPO_ACCESS_IS_OK": "no",
        "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "no",
        "BORG_CHECK_I_KNOW_WHAT_I_AM_DOING": "NO",
        "BORG_DELETE_I_KNOW_WHAT_I_AM_DOING": "NO",
        "BORG_HOSTNAME_IS_UNIQUE": "yes",  # stale locks of dead local processes are broken
    }
    if passphrase is not None:
        env["BORG_PASSPHRASE"] = passphrase
    if rsh is not None:
        env["BORG_RSH"] = rsh
    return env


def forget_repositories(base_dir: Path) -> list[str]:
    """Remove borg's cache and security records under ``base_dir``: after a rollback, borg
    rightly refuses a repository older than it last saw ("this is either an attack..."), and
    the caches describe archives that are gone. What was removed."""
    import shutil

    removed = []
    for sub in (".cache/borg", ".config/borg/security"):
        path = base_dir / sub
        if path.exists():
            shutil.rmtree(path)
            removed.append(str(path))
    return removed


def archive_name(guest: str, when: float) -> str:
    """``NAME.YYYYMMDDTHHMMSSZ`` (UTC, no colon: it shows in colon lines): a guest name has no
    dot, so ``NAME.*`` selects the archives of exactly that guest."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(when))
    return f"{check_guest_name(guest)}.{stamp}"


_ARCHIVE = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,62}\.\d{8}T\d{6}Z")


def check_archive(text: str) -> str:
    """An archive name as vs-backup makes them (``NAME.YYYYMMDDTHHMMSSZ``); UsageError else."""
    if not _ARCHIVE.fullmatch(text):
        raise UsageError(f"invalid archive name {text!r}: expected NAME.YYYYMMDDTHHMMSSZ")
    return text


def guest_of(archive: str) -> str:
    """The guest an archive belongs to."""
    return archive.split(".", 1)[0]


def build_serve_command(borg: str, repository: Path) -> str:
    """The forced command of a slave's key on the master: borg serve for that one repository,
    append-only (a slave adds archives, never removes or rewrites what is there)."""
    return f"{borg} serve --restrict-to-repository {repository} --append-only"


def build_authorized_line(borg: str, repository: Path, public_key: str, slave: str) -> str:
    """One line of the master's authorized_keys for ``slave``'s key: ``restrict`` (no pty, no
    forwarding of any kind) and the forced append-only borg serve; what the slave sent is
    checked word by word (nothing of it may add an option)."""
    return restricted_line(public_key, whose=slave, command=build_serve_command(borg, repository),
                           mark=f"{SERVE_MARK}{slave}")  # fmt: skip


@dataclass(frozen=True, slots=True)
class Created:
    """What borg create said of a new archive."""

    archive: str
    original_bytes: int
    compressed_bytes: int
    deduplicated_bytes: int
    files: int
    seconds: float


def parse_created(stdout: str) -> Created:
    """borg create --json's answer."""
    data = _json(stdout, "borg create")
    archive = data["archive"]
    stats = archive["stats"]
    return Created(
        archive=archive["name"],
        original_bytes=int(stats["original_size"]),
        compressed_bytes=int(stats["compressed_size"]),
        deduplicated_bytes=int(stats["deduplicated_size"]),
        files=int(stats["nfiles"]),
        seconds=float(archive["duration"]),
    )


@dataclass(frozen=True, slots=True)
class Listed:
    """One archive of the repository."""

    name: str
    id: str
    time: str  # borg's local ISO time of its start

    @property
    def guest(self) -> str:
        """The guest whose archive this is."""
        return guest_of(self.name)

    @property
    def checkpoint(self) -> bool:
        """What an interrupted create left (never a complete archive)."""
        return self.name.endswith(CHECKPOINT)


def parse_list(stdout: str) -> list[Listed]:
    """borg list --json's archives, oldest first."""
    data = _json(stdout, "borg list")
    return [Listed(a["name"], a["id"], a.get("start") or a["time"]) for a in data["archives"]]


def _json(stdout: str, what: str) -> dict[str, Any]:
    try:
        data = json.loads(stdout)
    except ValueError:
        raise BorgError(f"{what} gave no JSON answer: {stdout[:200]!r}") from None
    if not isinstance(data, dict):
        raise BorgError(f"{what} gave an unexpected answer: {stdout[:200]!r}")
    return data


def log_messages(stderr: str, *, levels: Sequence[str] = ()) -> list[str]:
    """The messages of borg's --log-json stderr (those of ``levels``, or all); a line that is
    no JSON (ssh's own, a Python traceback) is kept as it is."""
    found = []
    for line in stderr.splitlines():
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            found.append(line.strip())
            continue
        if not isinstance(entry, dict) or entry.get("type") != "log_message":
            continue
        if levels and entry.get("levelname") not in levels:
            continue
        found.append(str(entry.get("message", "")).strip())
    return [message for message in found if message]


def run_borg(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    what: str,
    cwd: str | None = None,
    warnings_ok: bool = True,
    prefix: Sequence[str] = (),
    timeout_s: float | None = None,
) -> Result:
    """Run ``borg ARGV`` (after ``prefix``: a sandbox); BorgError with borg's error messages when
    it fails (a warning, exit 1, counts as success only with ``warnings_ok``)."""
    result = run([*prefix, "borg", "--log-json", *argv], env=env, cwd=cwd, check=False,
                 timeout_s=timeout_s)  # fmt: skip
    if result.returncode == 0 or (warnings_ok and result.returncode == BORG_WARNING):
        return result
    errors = log_messages(result.stderr, levels=("ERROR", "CRITICAL"))
    errors = errors or log_messages(result.stderr, levels=("WARNING",))
    errors = errors or log_messages(result.stderr)
    reason = "; ".join(errors[-3:]) or f"exit status {result.returncode}"
    raise BorgError(f"{what}: borg exited {result.returncode}: {reason}")
