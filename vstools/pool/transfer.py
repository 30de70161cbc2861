"""Copying a guest's files between the master and a slave with rsync over the pool's SSH
(vstools.host.ssh): every attribute kept (hard links, ACLs, xattrs, file capabilities, sparse
files, device nodes, numeric owners), slaves.conf's bwlimit and compress honoured, a resumed
pass sending only what is missing, and a verification that reads both sides (checksums) and
lists any file that differs. The slave runs rsync's server side jailed with the one directory it
copies (vstools.host.rsync_server): a running guest cannot send it anywhere else."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from vstools.config.pool import Slave
from vstools.errors import HostError
from vstools.host.rsync_server import REMOTE_RSYNC
from vstools.host.ssh import (
    RSYNC_VANISHED,
    SSH_FAILED,
    Progress,
    ProgressReader,
    SshOptions,
    Unreachable,
    build_rsync_argv,
    parse_progress,
    run_argv,
)

ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True, slots=True)
class Pass:
    """One rsync pass: what it moved (the progress figures' last count) and how long it took."""

    bytes: int
    seconds: float
    vanished: bool = False  # files vanished while a running guest was read (exit 24)


def copy(
    source: str,
    target: str,
    *,
    slave: Slave,
    ssh: SshOptions,
    live: bool = False,
    progress: ProgressCallback | None = None,
    delete: bool = True,
    checksum: bool = False,
) -> Pass:
    """One rsync pass from ``source`` to ``target`` (one of them ``host:path``). ``live``: the
    source runs, so files vanishing while read (exit 24) are tolerated; every other failure,
    a partial transfer (exit 23) included, is an error: never a copy taken for complete.
    ``checksum``: compare every file's content, not only its size and time (a repair)."""
    argv = build_rsync_argv(
        source,
        target,
        ssh=ssh,
        delete=delete,
        bwlimit_kib=slave.bwlimit_kib,
        compress=slave.compress,
        extra=["--checksum"] if checksum else (),
        rsync_path=REMOTE_RSYNC,
    )
    reader = ProgressReader()

    def watch(chunk: str) -> None:
        """Show the figures of each progress line rsync completes."""
        figures = reader.feed(chunk)
        if figures is not None and progress is not None:
            progress(figures)

    started = time.monotonic()
    done = run_argv(argv, timeout_s=None, on_output=watch)
    seconds = time.monotonic() - started
    if done.code == SSH_FAILED:
        raise Unreachable(f"{slave.host}: unreachable: {done.reason()}")
    if done.code == RSYNC_VANISHED and live:
        return Pass(_moved(reader, done.stdout), seconds, vanished=True)
    if done.code != 0:
        raise HostError(f"rsync {source} {target} failed (exit {done.code}): {done.reason()}")
    return Pass(_moved(reader, done.stdout), seconds)


def _moved(reader: ProgressReader, stdout: str) -> int:
    """The bytes a pass moved: its last progress figure."""
    last = parse_progress(stdout) or reader.last
    return last.bytes if last is not None else 0


def differences(source: str, target: str, *, slave: Slave, ssh: SshOptions) -> list[str]:
    """Every file whose content, attributes or presence differ between ``source`` and
    ``target`` (rsync --dry-run --checksum --itemize-changes: both sides read in full)."""
    argv = build_rsync_argv(
        source,
        target,
        ssh=ssh,
        delete=True,
        partial=False,
        progress=False,
        extra=["--dry-run", "--checksum", "--itemize-changes"],
        rsync_path=REMOTE_RSYNC,
    )
    done = run_argv(argv, timeout_s=None)
    if done.code == SSH_FAILED:
        raise Unreachable(f"{slave.host}: unreachable: {done.reason()}")
    if done.code != 0:
        raise HostError(f"verifying {target} against {source} failed: {done.reason()}")
    return [line for line in done.stdout.splitlines() if line.strip()]


def verified(source: str, target: str, *, slave: Slave, ssh: SshOptions, what: str) -> int:
    """Check ``target`` against ``source`` file by file (checksums); whatever differs (a copy
    corrupted where it lies, D7) is copied again, compared by content, and checked once more.
    The number of files repaired; HostError when the copy still differs."""
    found = differences(source, target, slave=slave, ssh=ssh)
    if not found:
        return 0
    copy(source, target, slave=slave, ssh=ssh, checksum=True)
    still = differences(source, target, slave=slave, ssh=ssh)
    if still:
        shown = "; ".join(still[:5]) + (f" (+{len(still) - 5} more)" if len(still) > 5 else "")
        raise HostError(f"{what} does not match its source, even copied again: {shown}")
    return len(found)
