"""Backup alerts through the monitor's spool to a real SMTP server (aiosmtpd on loopback): a
guest of backup.conf overdue is mailed once, not again until it had a successful backup; a
guest backed up recently is not mailed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.fakehost import SmtpSink
from tests.cli_helpers import invoke
from vstools.backup.records import Records
from vstools.pool.inventory import Inventory, inventory_path


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    sink.start()
    yield sink
    sink.stop()


def _records(env: dict[str, str], clock: float) -> Records:
    return Records(Inventory(inventory_path(Path(env["VS_STATE_DIR"])), clock=lambda: clock))


def test_an_overdue_guest_is_mailed_once(etc_tree: dict[str, str], smtp: SmtpSink) -> None:
    etc = Path(etc_tree["VS_ETC_DIR"])
    (etc / "vs-tools.conf").write_text(
        f"SMTP_HOST=127.0.0.1\nSMTP_PORT={smtp.port}\nSYSLOG=no\nBACKUP_MAX_AGE=24\n"
        "BACKUP_MAILTO=backup@example.org\nHOSTNAME=vsm\n"
    )
    (etc / "backup.conf").write_text("web:hot\ndb:cold\nmail:hot\n")
    now = time.time()
    _records(etc_tree, now - 3600).succeeded("db", "vsh-02", "db.20261201T000000Z", "x")
    _records(etc_tree, now - 30 * 3600).succeeded("mail", "vsh-03", "mail.20261130T000000Z", "y")
    dry = invoke("vs-backup", ["--overdue", "--dry-run"], etc_tree)
    assert dry.out.splitlines() == ["web:would mail", "mail:would mail"]
    assert smtp.subjects() == []
    first = invoke("vs-backup", ["--overdue"], etc_tree)
    assert first.code == 0, first.err
    assert sorted(smtp.subjects()) == ["unknown:web:backup overdue", "vsh-03:mail:backup overdue"]
    assert all(m.to == ["backup@example.org"] for m in smtp.mails)
    assert invoke("vs-backup", ["--overdue"], etc_tree).code == 0
    assert len(smtp.subjects()) == 2  # once each
    # A successful backup resets it: overdue again later, mailed again.
    _records(etc_tree, now - 25 * 3600).succeeded("web", "vsh-01", "web.20261130T000000Z", "z")
    invoke("vs-backup", ["--overdue"], etc_tree)
    assert smtp.subjects()[-1] == "vsh-01:web:backup overdue"
    assert len(smtp.subjects()) == 3
