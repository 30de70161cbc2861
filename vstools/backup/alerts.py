"""Backup alerts (DESIGN §10): a failed backup, and a guest of backup.conf without a
successful backup for longer than BACKUP_MAX_AGE hours, are mailed to BACKUP_MAILTO with the
subject ``host:vserver:backup failed|overdue``, through the monitor's on-disk spool (written
first, delivered in order, kept for a later pass when the server does not answer). An overdue
guest is mailed once, until it has a successful backup again."""

from __future__ import annotations

import time
from collections.abc import Callable

from vstools.backup.master import overdue, timestamp
from vstools.backup.records import Records
from vstools.config.pool import BackupConf
from vstools.host.hostconfig import HostConfig
from vstools.host.journal import log
from vstools.host.mail import SmtpServer, Spool, compose
from vstools.monitor.watch import monitor_dir


def backup_spool(host: HostConfig) -> Spool:
    """The monitor's spool on this host (the master), delivering to SMTP_HOST:SMTP_PORT."""
    settings = host.settings
    return Spool(
        monitor_dir(host.paths) / "spool", SmtpServer(settings.smtp_host, settings.smtp_port)
    )


def mail_alert(
    host: HostConfig, spool: Spool, where: str, guest: str, *, reason: str, body: str
) -> str:
    """Spool one alert mail; its subject."""
    me = host.hostname()
    subject = f"{where}:{guest}:backup {reason}"
    name = spool.new_name()
    msg = compose(
        sender=host.settings.mail_from or f"root@{me}",
        to=host.settings.backup_mailto,
        subject=subject,
        body=body,
        message_id=f"<vs-backup.{name.removesuffix('.eml')}.{guest}@{me}>",
    )
    spool.enqueue(msg, name=name)
    log.info("alert %s", subject)
    return subject


def mail_overdue(
    host: HostConfig, records: Records, conf: BackupConf, spool: Spool,
    *, clock: Callable[[], float] = time.time,
) -> list[str]:  # fmt: skip
    """Mail every guest of ``conf`` whose backup is overdue and was not mailed yet; their
    subjects."""
    max_age_h = host.settings.backup_max_age_h
    subjects = []
    for guest in overdue(records, conf, max_age_h, clock()):
        record = records.guest(guest)
        last = timestamp(record.last_success) or "never"
        body = (
            f"Guest {guest} has had no successful backup for more than {max_age_h} hours.\n"
            f"Last successful backup: {last}\n"
            f"Last failure: {timestamp(record.last_failure) or 'none'} {record.last_error or ''}\n"
        )
        subjects.append(
            mail_alert(host, spool, _where(records, guest), guest, reason="overdue", body=body)
        )
        records.overdue_mailed(guest)
    return subjects


def _where(records: Records, guest: str) -> str:
    """Where the guest was last backed up, else last seen by vs-scan, else "unknown"."""
    record = records.guest(guest)
    seen = [row.host for row in records.inventory.guests(name=guest)]
    return record.host or (seen[0] if seen else "unknown")


def deliver(spool: Spool) -> None:
    """Try to send what is spooled now (what the server does not take stays for later)."""
    _, why = spool.deliver()
    if why:
        log.warning("backup alerts spooled, not sent yet: %s", why)
