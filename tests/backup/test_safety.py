"""Backups that fail or are killed never cost a good archive: D9 (killed at every step, the
previous archives intact and a re-run completes), D10 (a failed backup never prunes), D12 (a
failed cold backup restarts its guest), the slave's key that can only append (and the master
that notices a deletion before a compaction makes it permanent), and hot backups on btrfs read
from a snapshot that is always removed."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.backup.conftest import REPO, _archives, _backup_conf, _line
from tests.pool.test_copy import _create, describe_tree, fidelity_tree
from tests.poolhosts import SESSION_PATH, Pool, PoolHost

pytestmark = [pytest.mark.privileged, pytest.mark.e2e]


def _set(pool: Pool, line: str) -> None:
    """Set one KEY=VALUE of the master's vs-tools.conf (replacing the key's line)."""
    path = pool.master.base / "etc" / "vs-tools.conf"
    key = line.split("=", 1)[0]
    kept = [old for old in path.read_text().splitlines() if not old.startswith(f"{key}=")]
    path.write_text("\n".join([*kept, line]) + "\n")


def _running(host: PoolHost, name: str = "web") -> bool:
    facts = json.loads(host.run("vs-fonctions", "--json", "guest_facts", name).stdout)["result"]
    return bool(facts["running"]) and not facts["frozen"]


def _break_master_host_key(pool: Pool) -> None:
    """The slaves are told a wrong host key for the master: their ssh refuses it, borg fails."""
    wrong = pool.master.base / "etc" / "vst-wrong-host-key.pub"
    wrong.write_text((pool.slave("vsh-01").base / "ssh" / "host_ed25519.pub").read_text())
    _set(pool, f"BACKUP_HOST_KEY={wrong}")


def test_d10_a_failed_backup_never_prunes_and_d12_restarts_a_cold_guest(backup_pool: Pool) -> None:
    pool = backup_pool
    one = pool.slave("vsh-01")
    _create(one)
    one.run("vs-control", "--name", "web", "--start")
    _backup_conf(pool, "web:cold\n")
    _set(pool, "BACKUP_KEEP=5")
    made = [_line(pool.master.run("vs-backup"))[2] for _ in range(3)]
    assert _archives(pool) == made
    _set(pool, "BACKUP_KEEP=1")
    saved = (pool.master.base / "etc" / "vs-tools.conf").read_text()
    _break_master_host_key(pool)
    failed = pool.master.run("vs-backup", check=False)
    assert failed.returncode == 5 and "FAILED" in failed.stdout
    assert _archives(pool) == made  # D10: nothing pruned
    assert _running(one)  # D12: stopped for the backup, started again though it failed
    spool = pool.master.base / "state" / "monitor" / "spool"  # no SMTP server: it waits there
    assert any("Subject: vsh-01:web:backup failed" in p.read_text() for p in spool.glob("*.eml"))
    # --dry-run says what retention would remove, and removes nothing.
    (pool.master.base / "etc" / "vs-tools.conf").write_text(saved)
    dry = pool.master.run("vs-backup", "--prune", "--dry-run")
    assert sorted(dry.stdout.splitlines()) == [f"web:{a}:would prune" for a in made[:2]]
    assert _archives(pool) == made
    plan = pool.master.run("vs-backup", "--dry-run")
    assert "would: back up web (cold) on vsh-01" in plan.stderr
    assert f"would: prune {made[0]}" in plan.stderr and plan.stdout == ""
    assert _archives(pool) == made and _running(one)
    # A complete new archive, then retention keeps one.
    newest = _line(pool.master.run("vs-backup"))[2]
    assert _archives(pool) == [newest]


def test_d9_a_backup_killed_at_every_step_keeps_the_previous_archives(backup_pool: Pool) -> None:
    """Killed at each step in turn (one guest, KEEP=2), each time followed by a re-run that
    completes: the archives before the kill are there until a complete new one replaced them."""
    pool = backup_pool
    one = pool.slave("vsh-01")
    _create(one)
    _backup_conf(pool, "web:hot\n")
    before = [_line(pool.master.run("vs-backup"))[2], _line(pool.master.run("vs-backup"))[2]]
    for step in ("archive", "record", "prune", "compact"):
        killed = pool.master.run("env", f"VS_FAILPOINT=backup:{step}", "vs-backup", check=False)
        assert killed.returncode == -9, (step, killed.stderr)
        kept = _archives(pool)
        if step == "compact":  # compact comes after prune: the newest two are kept
            assert len(kept) == 2 and before[1] in kept, (step, before, kept)
        else:
            assert set(before) <= set(kept), (step, before, kept)
        again = _line(pool.master.run("vs-backup"))
        before = _archives(pool)
        assert again[2] in before and len(before) == 2, (step, before)
        assert pool.master.run("vs-backup", "--check").stdout.split(":")[1] == "ok"


def test_a_slave_key_can_only_append_and_a_deletion_is_rolled_back(backup_pool: Pool) -> None:
    pool = backup_pool
    one = pool.slave("vsh-01")
    _create(one)
    _backup_conf(pool, "web:hot\n")
    made = [_line(pool.master.run("vs-backup"))[2] for _ in range(2)]
    key, known = "/etc/vs-tools/backup_key", "/etc/vs-tools/vst-master-known"
    host_key = (pool.master.base / "ssh" / "host_ed25519.pub").read_text().split()
    (one.base / "etc" / "vst-master-known").write_text(f"vsm {host_key[0]} {host_key[1]}\n")
    ssh = ["ssh", "-i", key, "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={known}",
           "-o", "BatchMode=yes"]  # fmt: skip
    # The key runs borg serve, never a shell.
    shell = one.run(*ssh, "root@vsm", "id", check=False)
    assert "uid=" not in shell.stdout
    # borg delete through it: borg 1.2's append-only mode only hides the archive...
    passphrase = (pool.master.base / "etc" / "backup.passphrase").read_text().strip()
    one.run("env", f"BORG_PASSPHRASE={passphrase}", f"BORG_RSH={shlex.join(ssh)}",
            "BORG_BASE_DIR=/var/lib/vs-tools/vst-borg", "BORG_RELOCATED_REPO_ACCESS_IS_OK=yes",
            "borg", "delete", f"ssh://root@vsm/var/lib/vs-tools/backup::{made[0]}")  # fmt: skip
    assert _archives(pool) == made[1:]
    # ...so the master refuses every prune and compaction until someone looked.
    refused = pool.master.run("vs-backup", check=False)
    assert refused.returncode == 4, refused.stderr
    assert f"vanished: {made[0]}" in refused.stderr
    assert len(_archives(pool)) == 2  # the new archive was made, nothing pruned
    # The master puts the repository back as it last saw it: the deleted archive returns.
    rolled = pool.master.run("vs-backup", "--rollback")
    assert "rolled back to transaction" in rolled.stderr
    assert _archives(pool) == made
    assert pool.master.run("vs-backup", "--check").stdout.split(":")[1] == "ok"
    newest = _line(pool.master.run("vs-backup"))[2]  # and backups go on
    assert _archives(pool) == [made[1], newest]


def test_hot_backup_on_btrfs_reads_a_snapshot_and_removes_it(
    backup_pool: Pool,
    btrfs_slave: PoolHost,
) -> None:
    pool = backup_pool
    one, two = pool.slave("vsh-01"), btrfs_slave
    source = _create(one)
    fidelity_tree(source)
    expected = describe_tree(source / "root" / "d1")
    pool.master.run("vs-move", "--name", "web", "--dst_host", "vsh-02", "--1step")
    two.run("vs-control", "--name", "web", "--start")
    _backup_conf(pool, "web:hot\n")
    fields = _line(pool.master.run("vs-backup"))
    assert fields[0] == "vsh-02" and fields[6] == "from a snapshot"
    assert _running(two)
    snapshots = two.inside("/var/lib/vservers/.snapshots")
    assert not snapshots.exists() or os.listdir(snapshots) == []
    _backup_conf(pool, "web:cold\n")  # cold on btrfs: stopped, read in place, started again
    cold = _line(pool.master.run("vs-backup"))
    assert cold[6].startswith("stopped ") and _running(two)
    two.run("vs-control", "--name", "web", "--stop")
    pool.master.run("vs-remove", "--name", "web", "--host", "vsh-02", "--force")
    pool.master.run("vs-put", "--name", "web", "--host", "vsh-03", "--from-backup")
    assert describe_tree(pool.slave("vsh-03").base / "roots" / "web" / "root" / "d1") == expected


def _borg_create_pid(host: PoolHost) -> int | None:
    """The PID of a ``borg create`` running on ``host`` (in its network namespace), if any."""
    listed = subprocess.run(["ip", "netns", "pids", host.netns], capture_output=True, text=True,
                            check=False).stdout.split()  # fmt: skip
    for pid in listed:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"borg") for a in argv) and b"create" in argv:
            return int(pid)
    return None


def test_d9_the_slaves_borg_killed_mid_archive_keeps_the_previous_one(backup_pool: Pool) -> None:
    pool = backup_pool
    one = pool.slave("vsh-01")
    source = _create(one)
    _backup_conf(pool, "web:hot\n")
    first = _line(pool.master.run("vs-backup"))[2]
    (source / "root" / "big").write_bytes(os.urandom(160 << 20))  # something to read a while
    env = {"PATH": SESSION_PATH, "VS_NO_SYSTEMD": "1", "HOME": "/root"}
    backup = subprocess.Popen(
        ["nsenter", f"--target={pool.master.pid}", "--mount", "--net", "--", "vs-backup"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        pid = None
        for _ in range(3000):
            pid = _borg_create_pid(one)
            if pid is not None or backup.poll() is not None:
                break
            time.sleep(0.01)
        assert pid is not None, "borg create never ran on vsh-01"
        os.kill(pid, signal.SIGKILL)  # by the PID found, as a crash of the slave's borg
        out, err = backup.communicate(timeout=300)
    finally:
        if backup.poll() is None:
            backup.kill()
            backup.wait()
    assert backup.returncode == 5, out + err
    assert _archives(pool) == [first]  # the previous archive, and no half one listed
    again = _line(pool.master.run("vs-backup"))
    assert _archives(pool) == [first, again[2]]
    assert pool.master.run("vs-backup", "--check").stdout.split(":")[1] == "ok"


def test_a_forged_archive_cannot_make_a_restore_write_outside(
    backup_pool: Pool, tmp_path: Path
) -> None:
    """borg 1.2 extracts x/f through a symlink x the same archive made: a slave holding the
    passphrase could forge such an archive. The sandboxed extraction fails instead."""
    pool = backup_pool
    forge = tmp_path / "vst-forge"
    real = forge / "real"  # where the forged symlink leads: outside any restore target
    real.mkdir(parents=True)
    (real / "planted").write_text("pwned\n")
    (forge / "tree").mkdir()
    (forge / "tree" / "x").symlink_to(real)
    passphrase = (pool.master.base / "etc" / "backup.passphrase").read_text().strip()
    archive = "web.20260101T000000Z"
    script = f"cd {forge / 'tree'} && borg create {REPO}::{archive} x x/planted"
    pool.master.run("env", f"BORG_PASSPHRASE={passphrase}", "BORG_BASE_DIR=/tmp/vst-forge-borg",
                    "sh", "-c", script)  # fmt: skip
    listed = pool.master.run("env", f"BORG_PASSPHRASE={passphrase}",
                             "BORG_BASE_DIR=/tmp/vst-forge-borg", "borg", "list",
                             f"{REPO}::{archive}").stdout  # fmt: skip
    shutil.rmtree("/tmp/vst-forge-borg", ignore_errors=True)
    assert "x/planted" in listed
    (real / "planted").unlink()
    target = tmp_path / "vst-extract"
    failed = pool.master.run("vs-backup", "--extract", "--name", "web", "--archive", archive,
                             "--to", str(target), "x", "x/planted", check=False)  # fmt: skip
    assert failed.returncode == 5, failed.stdout + failed.stderr
    assert os.listdir(real) == []  # nothing written through the symlink
