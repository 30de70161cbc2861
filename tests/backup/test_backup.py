"""vs-backup with the test pool (real sshd in namespaces, real borg): the master's encrypted
repository, slaves writing to it through an append-only forced borg serve, hot and cold on dir,
D1 fidelity through backup and restore, retention only after a complete archive (D10), a
killed backup leaving the previous archives and a re-run completing (D9), a failed cold backup
restarting its guest (D12), and a slave's key that cannot delete what the master made."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from tests.backup.conftest import REPO, _archives, _backup_conf, _line
from tests.pool.test_copy import _create, describe_tree, fidelity_tree
from tests.poolhosts import Pool

pytestmark = [pytest.mark.privileged, pytest.mark.e2e]


def test_repository_is_encrypted_and_its_passphrase_root_only(backup_pool: Pool) -> None:
    master = backup_pool.master
    config = (master.base / "state" / "backup" / "config").read_text()
    assert "key = " in config  # repokey: the key (encrypted by the passphrase) is in the repo
    passphrase = master.base / "etc" / "backup.passphrase"
    assert passphrase.stat().st_mode & 0o777 == 0o600
    passphrase.chmod(0o644)
    refused = master.run("vs-backup", "--list", check=False)
    assert refused.returncode == 4 and "mode 0600" in refused.stderr
    passphrase.chmod(0o600)


def test_cold_backup_of_a_running_guest_restarts_it_and_restores_byte_for_byte(
    backup_pool: Pool,
) -> None:
    pool = backup_pool
    one = pool.slave("vsh-01")
    source = _create(one)
    fidelity_tree(source)
    expected = describe_tree(source)
    one.run("vs-control", "--name", "web", "--start")
    _backup_conf(pool, "web:cold\n")
    host, name, archive, _mb, _dedup, _s, held = _line(pool.master.run("vs-backup"))
    assert (host, name) == ("vsh-01", "web")
    assert archive.startswith("web.") and held.startswith("stopped ")
    assert one.state("web") is not None  # started again
    assert _archives(pool) == [archive]
    assert pool.master.run("vs-backup", "--check").stdout.split(":")[1] == "ok"
    db = sqlite3.connect(pool.master.base / "state" / "pool" / "inventory.db")
    try:
        row = db.execute(
            "SELECT host, last_archive, last_success, last_check_ok FROM backup_guests"
            " WHERE guest = 'web'"
        ).fetchone()
    finally:
        db.close()
    assert row[:2] == ("vsh-01", archive) and row[2] is not None and row[3] == 1
    # The slave's key is restricted on the master to an append-only borg serve of the repo.
    keys = (pool.master.base / "ssh" / "authorized_keys").read_text()
    line = next(k for k in keys.splitlines() if k.endswith("vs-backup:vsh-01"))
    assert line.startswith('restrict,command="') and '--append-only" ssh-' in line
    assert f"serve --restrict-to-repository {REPO} --append-only" in line
    # Restore the whole guest on another slave: every attribute back, and it starts.
    one.run("vs-control", "--name", "web", "--stop")
    refused = pool.master.run("vs-put", "--name", "web", "--from-backup", check=False)
    assert refused.returncode == 4 and "--force" in refused.stderr
    pool.master.run("vs-remove", "--name", "web", "--host", "vsh-01", "--force")
    put = pool.master.run("vs-put", "--name", "web", "--host", "vsh-02", "--from-backup", archive)
    assert put.stdout.startswith("vsh-02:web:"), put.stderr
    two = pool.slave("vsh-02")
    assert describe_tree(two.base / "roots" / "web") == expected
    two.run("vs-control", "--name", "web", "--start")
    assert two.run("vs-exec", "-T", "web", "--", "cat", "/root/d1/high").stdout == "far"


def test_hot_backup_on_dir_freezes_the_guest_and_extracts_single_files(
    backup_pool: Pool, tmp_path: Path
) -> None:
    pool = backup_pool
    one = pool.slave("vsh-01")
    source = _create(one)
    (source / "etc" / "vst-file").write_text("one\n")
    one.run("vs-control", "--name", "web", "--start")
    _backup_conf(pool, "web:hot\n")
    fields = _line(pool.master.run("vs-backup", "--name", "web"))
    assert fields[6].startswith("frozen ")
    facts = json.loads(one.run("vs-fonctions", "--json", "guest_facts", "web").stdout)["result"]
    assert facts["running"] and not facts["frozen"]
    target = tmp_path / "vst-extract"
    pool.master.run("vs-backup", "--extract", "--name", "web", "--archive", fields[2],
                    "--to", str(target), "/etc/vst-file")  # fmt: skip
    assert (target / "etc" / "vst-file").read_text() == "one\n"
    assert sorted(os.listdir(target)) == ["etc"]
    # --force replaces the running guest by its archive, on the same slave.
    (source / "etc" / "vst-file").write_text("changed\n")
    pool.master.run("vs-put", "--name", "web", "--from-backup", "--force", "--host", "vsh-01")
    assert (one.base / "roots" / "web" / "etc" / "vst-file").read_text() == "one\n"
    assert pool.master.run("vs-scan").stdout == "vsh-01:web:disabled:stopped\n"
