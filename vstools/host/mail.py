"""The one door to SMTP (the only importer of smtplib): the monitor's alert mails, through an
on-disk spool.

Every mail is first written to the spool directory (one file per mail, written atomically and
fsynced, named by the time it was made so that names sort in order), then delivered from there
in order, oldest first. A delivery pass holds an flock on the spool, so two daemons sharing a
state directory never send the same file twice. When the server does not answer, the pass stops
at the first failure (later mails never overtake earlier ones) and the files stay for the next
pass, also across a restart of the daemon. Once the server accepted a mail, its file moves to
``sent/`` and is kept a day, so that the monitor can tell a mail it must spool again after a
crash from one already sent (a crash in the instant between the server's answer and the move
would send that one mail again: at least once, never lost). A mail the server refuses for good
(5xx) is moved to ``failed/`` so it does not block the queue, and logged."""

from __future__ import annotations

import contextlib
import logging
import os
import smtplib
import threading
import time
from dataclasses import dataclass
from email.message import EmailMessage, Message
from email.utils import format_datetime, localtime
from pathlib import Path

from vstools.host.fsutil import atomic_write, take_lock

log = logging.getLogger("vstools.mail")

SUFFIX = ".eml"
SENT_KEEP_S = 86400.0


@dataclass(frozen=True, slots=True)
class SmtpServer:
    """The SMTP server alert mails go to, and how long to wait for its answers (seconds)."""

    host: str = "localhost"
    port: int = 25
    timeout_s: float = 10.0


def compose(
    *, sender: str, to: tuple[str, ...], subject: str, body: str, message_id: str
) -> EmailMessage:
    """A plain-text mail with a stable Message-ID (a resent copy is recognisable)."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject
    msg["Date"] = format_datetime(localtime())
    msg["Message-ID"] = message_id
    msg["X-Mailer"] = "vs-monitor"
    msg.set_content(body)
    return msg


class Spool:
    """Mails waiting for the SMTP server, in order, on disk."""

    def __init__(self, directory: Path, server: SmtpServer) -> None:
        self.directory = directory
        self.server = server
        self._lock = threading.Lock()
        self._seq = 0
        directory.mkdir(parents=True, exist_ok=True)

    def new_name(self) -> str:
        """A file name for the next mail; names sort in the order they were made."""
        with self._lock:
            self._seq += 1
            # time_ns first: names sort in the order mails were made, across restarts too.
            return f"{time.time_ns():020d}-{os.getpid()}-{self._seq:06d}{SUFFIX}"

    def enqueue(self, msg: Message, *, name: str | None = None) -> Path:
        """Write ``msg`` to the spool (durably) and return its file."""
        path = self.directory / (name or self.new_name())
        atomic_write(path, msg.as_bytes(), mode=0o600)
        return path

    def known(self, name: str) -> bool:
        """True when mail ``name`` is spooled, or was sent (kept in ``sent/`` for a day)."""
        return (self.directory / name).exists() or (self.directory / "sent" / name).exists()

    def pending(self) -> list[Path]:
        """Spooled mails, oldest first."""
        return sorted(p for p in self.directory.iterdir() if p.name.endswith(SUFFIX))

    def deliver(self) -> tuple[int, str | None]:
        """Send what is spooled, in order, in one SMTP session: (mails sent, why it stopped
        or None when the spool is empty). Another process delivering: (0, None)."""
        lock_fd = take_lock(self.directory / ".lock", mode=0o600)
        if lock_fd is None:
            return 0, None
        try:
            return self._deliver_locked()
        finally:
            os.close(lock_fd)

    def _deliver_locked(self) -> tuple[int, str | None]:
        sent_dir = self.directory / "sent"
        sent_dir.mkdir(exist_ok=True)
        _prune(sent_dir, time.time() - SENT_KEEP_S)
        files = self.pending()
        if not files:
            return 0, None
        sent = 0
        try:
            with smtplib.SMTP(
                self.server.host, self.server.port, timeout=self.server.timeout_s
            ) as smtp:
                for path in files:
                    data = path.read_bytes()
                    sender, recipients = _envelope(data)
                    try:
                        smtp.sendmail(sender, recipients, data)
                    except (smtplib.SMTPRecipientsRefused, smtplib.SMTPDataError) as exc:
                        code = getattr(exc, "smtp_code", 550)
                        if isinstance(exc, smtplib.SMTPDataError) and code < 500:
                            raise
                        self._set_aside(path, exc)
                        continue
                    # Kept a day under sent/, so that a mail replayed after a crash is
                    # recognised as sent (Monitor's outbox), then pruned.
                    path.rename(sent_dir / path.name)
                    os.utime(sent_dir / path.name)  # the day counts from the sending
                    sent += 1
        except (OSError, smtplib.SMTPException) as exc:
            why = f"SMTP {self.server.host}:{self.server.port}: {exc}"
            return sent, why
        return sent, None

    def _set_aside(self, path: Path, exc: Exception) -> None:
        failed = self.directory / "failed"
        failed.mkdir(exist_ok=True)
        path.rename(failed / path.name)
        log.error("mail %s refused for good, moved to %s: %s", path.name, failed, exc)


def _prune(directory: Path, older_than: float) -> None:
    for path in directory.iterdir():
        with contextlib.suppress(OSError):
            if path.stat().st_mtime < older_than:
                path.unlink()


def _envelope(data: bytes) -> tuple[str, list[str]]:
    from email import message_from_bytes
    from email.utils import getaddresses

    msg = message_from_bytes(data)
    sender = getaddresses([str(msg.get("From", ""))])[0][1] or "root"
    recipients = [addr for _, addr in getaddresses([str(msg.get("To", ""))]) if addr]
    return sender, recipients


class Mailer(threading.Thread):
    """Delivers the spool in the background: at once when woken, else with a growing pause
    after failures (1, 2, 5, 10, 30 s), and every ``idle_s`` anyway."""

    BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)

    def __init__(self, spool: Spool, *, idle_s: float = 30.0) -> None:
        super().__init__(name="vs-monitor-mailer", daemon=True)
        self.spool = spool
        self.idle_s = idle_s
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.last_error: str | None = None

    def run(self) -> None:
        """The thread's loop until ``stop``: deliver the spool, then wait for the pause (the backoff
        after a failure, else ``idle_s``) or a wake-up. An exception is logged, never fatal."""
        failures = 0
        while not self.stopping.is_set():
            sent, why = 0, None
            try:
                sent, why = self.spool.deliver()
            except Exception as exc:  # a bug or a broken spool: log it, keep the thread alive
                log.exception("mail delivery failed")
                why = str(exc)
            if sent:
                log.info("delivered %d alert mail(s)", sent)
            if why is not None:
                if why != self.last_error:
                    log.warning("alert mail kept in the spool: %s", why)
                self.last_error = why
                pause = self.BACKOFF_S[min(failures, len(self.BACKOFF_S) - 1)]
                failures += 1
            else:
                self.last_error = None
                failures = 0
                pause = self.idle_s
            self.wake.wait(pause)
            self.wake.clear()

    def stop(self) -> None:
        """Ask the thread to end and wait for it, at most the SMTP timeout plus a second."""
        self.stopping.set()
        self.wake.set()
        with contextlib.suppress(RuntimeError):
            self.join(timeout=self.spool.server.timeout_s + 1)
