"""The backup tests' pool: the master set up for backups (its repository made), and helpers."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from tests.pool.test_btrfs import btrfs_slave  # noqa: F401 - a fixture the tests use
from tests.poolhosts import Pool

REPO = "/var/lib/vs-tools/backup"


@pytest.fixture
def backup_pool(pool: Pool) -> Iterator[Pool]:
    """The pool with the master set up for backups (its repository made), undone after."""
    master = pool.master
    keys = master.base / "ssh" / "authorized_keys"
    saved_keys = keys.read_text()
    with open(master.base / "etc" / "vs-tools.conf", "a") as conf:
        conf.write(
            f"BACKUP_MASTER=vsm\nBACKUP_HOST_KEY={master.base}/ssh/host_ed25519.pub\n"
            "BACKUP_KEEP=2\n"
        )
    try:
        master.run("vs-backup", "--init")
        yield pool
    finally:
        keys.write_text(saved_keys)
        for host in pool.hosts:
            for leftover in ("backup", "borg"):
                shutil.rmtree(host.base / "state" / leftover, ignore_errors=True)
            for key in ("backup_key", "backup_key.pub", "backup.passphrase"):
                (host.base / "etc" / key).unlink(missing_ok=True)


def _backup_conf(pool: Pool, text: str) -> None:
    (pool.master.base / "etc" / "backup.conf").write_text(text)


def _archives(pool: Pool, name: str = "web") -> list[str]:
    out = pool.master.run("vs-backup", "--json", "--list", "--name", name).stdout
    return [row["archive"] for row in json.loads(out)]


def _line(result: subprocess.CompletedProcess[str]) -> list[str]:
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout + result.stderr
    return lines[0].split(":")
