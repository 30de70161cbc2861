"""vs-get and vs-put over real SSH and rsync between the test pool's hosts: a guest copied to the
master's store and from it to another slave keeps every attribute (D1), placement honours
noselect and says why, the destination is checked before anything is sent, a copy killed at
any step converges when run again (D4), a corrupted copy is caught (D7) and hostile names are
refused before any I/O (D15)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import stat
import struct
import subprocess
import time
from pathlib import Path

import pytest

from tests.poolhosts import SESSION_PATH, Pool, PoolHost

pytestmark = [pytest.mark.privileged, pytest.mark.e2e]

GET_STEPS = ("ask the slave", "copy root", "copy configuration", "verify", "commit")
PUT_STEPS = ("preflight", "prepare", "copy root", "copy configuration", "verify", "commit")


def _create(
    host: PoolHost, name: str = "web", ip: str = "198.51.100.10", context: int = 101
) -> Path:
    host.run("vs-create", "--name", name, "--interface", ip, "--context", str(context))
    return host.base / "roots" / name


def _acl(uid: int) -> bytes:
    """An access ACL: user::rw-, user:UID:r--, group::r--, mask::r--, other::---."""
    entries = ((0x01, 6, 0xFFFFFFFF), (0x02, 4, uid), (0x04, 4, 0xFFFFFFFF),
               (0x10, 4, 0xFFFFFFFF), (0x20, 0, 0xFFFFFFFF))  # fmt: skip
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


def fidelity_tree(root: Path) -> None:
    """D1: what a copy must keep, planted in a guest's root."""
    data = root / "root" / "d1"
    data.mkdir()
    (data / "file").write_bytes(os.urandom(200_000))
    os.link(data / "file", data / "hardlink")
    (data / "xattr").write_text("x")
    os.setxattr(data / "xattr", "user.vst", b"kept")
    os.setxattr(data / "xattr", "trusted.vst", b"trusted")
    (data / "acl").write_text("acl")
    os.setxattr(data / "acl", "system.posix_acl_access", _acl(1000))
    (data / "ping").write_bytes(b"\x7fELF")
    # security.capability v2: cap_net_raw (13) permitted and effective.
    os.setxattr(data / "ping", "security.capability", struct.pack("<IIIII", 0x02000001,
                1 << 13, 0, 0, 0))  # fmt: skip
    with open(data / "sparse", "wb") as handle:
        handle.seek(64 << 20)
        handle.write(b"end")
    os.mknod(data / "null", 0o020666, os.makedev(1, 3))
    os.mkfifo(data / "fifo")
    (data / "high").write_text("far")
    os.chown(data / "high", 1_000_000, 1_000_001)
    (data / "link").symlink_to("file")
    os.chmod(data / "file", 0o4711)  # noqa: S103 - a setuid file the copy must keep


def describe_tree(root: Path) -> dict[str, object]:
    """Everything D1 compares of a tree, by relative path."""
    found: dict[str, object] = {}
    inodes: dict[tuple[int, int], str] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        rel = str(path.relative_to(root))
        key = (info.st_dev, info.st_ino)
        entry: dict[str, object] = {
            "mode": oct(info.st_mode),
            "uid": info.st_uid,
            "gid": info.st_gid,
            "link_to": inodes.get(key)
            if info.st_nlink > 1 and not stat.S_ISDIR(info.st_mode)
            else None,
        }
        inodes.setdefault(key, rel)
        if stat.S_ISREG(info.st_mode):
            entry["sha"] = hashlib.sha256(path.read_bytes()).hexdigest()
            entry["size"] = info.st_size
            entry["sparse"] = info.st_blocks * 512 < info.st_size // 2
        if stat.S_ISCHR(info.st_mode):
            entry["rdev"] = info.st_rdev
        if stat.S_ISLNK(info.st_mode):
            entry["target"] = os.readlink(path)
        else:
            entry["xattrs"] = {
                name: os.getxattr(path, name, follow_symlinks=False)
                for name in sorted(os.listxattr(path, follow_symlinks=False))
            }
        found[rel] = entry
    return found


def test_get_then_put_keeps_every_attribute(pool: Pool) -> None:
    source = _create(pool.slave("vsh-01"))
    fidelity_tree(source)
    expected = describe_tree(source)
    got = pool.master.run("vs-get", "--name", "web")
    host, name, _mb, _, how, resumed = got.stdout.strip().split(":")
    assert (host, name, how, resumed) == ("vsh-01", "web", "stopped", "")
    stored = pool.master.base / "state" / "pool" / "store" / "web"
    assert describe_tree(stored / "root") == expected
    assert (stored / "conf" / "guest.conf").is_file()
    pool.master.run("vs-remove", "--name", "web", "--host", "vsh-01")  # the store has a copy
    put = pool.master.run("vs-put", "--name", "web", "--host", "vsh-02")
    assert put.stdout.startswith("vsh-02:web:")
    target = pool.slave("vsh-02").base / "roots" / "web"
    assert describe_tree(target) == expected
    two = pool.slave("vsh-02")
    two.run("vs-control", "--name", "web", "--start")
    assert two.run("vs-exec", "-T", "web", "--", "cat", "/root/d1/high").stdout == "far"
    assert pool.master.run("vs-scan").stdout == "vsh-02:web:disabled:running\n"


# ---- D4: killed at every step, then run again -------------------------------------------------


def _killed(host: PoolHost, failpoint: str, *argv: str) -> None:
    """Run a master command that SIGKILLs itself right after recording ``failpoint``."""
    result = host.run("env", f"VS_FAILPOINT={failpoint}", *argv, check=False)
    assert result.returncode == -9, (failpoint, result.returncode, result.stderr)


def _journal(pool: Pool) -> list[tuple[str, str, str, str]]:
    db = sqlite3.connect(pool.master.base / "state" / "pool" / "inventory.db")
    try:
        return db.execute("SELECT op, guest, step, state FROM journal ORDER BY id").fetchall()
    finally:
        db.close()


def _store(pool: Pool) -> Path:
    return pool.master.base / "state" / "pool" / "store"


def test_d4_get_killed_at_every_step_converges_to_one_complete_copy(pool: Pool) -> None:
    source = _create(pool.slave("vsh-01"))
    fidelity_tree(source)
    expected = describe_tree(source)
    for step in GET_STEPS:
        if (_store(pool) / "web").exists():
            shutil.rmtree(_store(pool) / "web")
        _killed(pool.master, f"get:{step}", "vs-get", "--name", "web")
        assert _journal(pool)[-1][2:] == (step, "running")
        if step != "commit":  # before the rename, the copy is not taken for a complete one
            assert not (_store(pool) / "web").exists()
        resumed = pool.master.run("vs-get", "--name", "web").stdout.strip().split(":")
        assert resumed[0] == "vsh-01" and resumed[-1] == step
        assert describe_tree(_store(pool) / "web" / "root") == expected
        assert sorted(p.name for p in _store(pool).iterdir()) == ["web"]
    assert {status for *_, status in _journal(pool)} == {"done"}


def test_d4_get_of_a_running_guest_killed_while_frozen_leaves_it_running(pool: Pool) -> None:
    one = pool.slave("vsh-01")
    _create(one)
    one.run("vs-control", "--name", "web", "--start")
    for step in ("freeze", "final pass", "verify"):
        _killed(pool.master, f"get:{step}", "vs-get", "--name", "web")
        got = pool.master.run("vs-get", "--name", "web").stdout.strip().split(":")
        assert got[4].startswith("frozen ") and got[5] == step
        assert _freezer_state(one) == "thawed"
        assert one.run("vs-exec", "-T", "web", "--", "echo", "up").stdout == "up\n"
    assert pool.master.run("vs-scan").stdout == "vsh-01:web:disabled:running\n"


def _freezer_state(host: PoolHost) -> str:
    facts = json.loads(host.run("vs-fonctions", "--json", "guest_facts", "web").stdout)["result"]
    assert facts["running"], facts
    return "frozen" if facts["frozen"] else "thawed"


def test_d4_put_killed_at_every_step_puts_the_guest_once(pool: Pool) -> None:
    source = _create(pool.slave("vsh-01"))
    fidelity_tree(source)
    expected = describe_tree(source)
    pool.master.run("vs-get", "--name", "web")
    pool.master.run("vs-remove", "--name", "web", "--host", "vsh-01")  # the store has a copy
    two = pool.slave("vsh-02")
    for step in PUT_STEPS:
        _killed(pool.master, f"put:{step}", "vs-put", "--name", "web", "--host", "vsh-02")
        if step != "commit":
            assert "web" not in pool.master.run("vs-scan", "--host", "vsh-02").stdout
        # Resumed without --host: the journal remembers the target.
        put = pool.master.run("vs-put", "--name", "web").stdout.strip().split(":")
        assert put[0] == "vsh-02" and put[-1] == step
        assert two.guests() == ["web"]
        assert describe_tree(two.base / "roots" / "web") == expected
        assert not any(p.name.startswith(".") for p in (two.base / "roots").iterdir())
        assert not any(p.name.startswith(".") for p in (two.base / "guests").iterdir())
        if step != PUT_STEPS[-1]:
            pool.master.run("vs-remove", "--name", "web", "--host", "vsh-02")
    assert pool.master.run("vs-scan").stdout == "vsh-02:web:disabled:stopped\n"


def test_a_get_and_a_put_of_one_guest_do_not_interleave(pool: Pool) -> None:
    _create(pool.slave("vsh-01"))
    pool.master.run("vs-get", "--name", "web")
    _killed(pool.master, "put:copy root", "vs-put", "--name", "web", "--host", "vsh-02")
    refused = pool.master.run("vs-get", "--name", "web", check=False)
    assert refused.returncode == 4
    assert "a put begun" in refused.stderr and "vs-put --name web" in refused.stderr
    pool.master.run("vs-put", "--name", "web")
    pool.master.run("vs-get", "--name", "web", "--host", "vsh-01")


# ---- D5/D8: the SSH connection cut mid-copy, then a resumed copy sends only the rest ----------


def test_d5_d8_ssh_cut_mid_copy_then_the_rerun_sends_only_the_rest(pool: Pool) -> None:
    source = _create(pool.slave("vsh-01"))
    data = source / "root" / "data"
    data.mkdir()
    for index in range(24):
        (data / f"{index:02d}.bin").write_bytes(os.urandom(1 << 20))
    expected = describe_tree(source)
    # 2 MiB/s: the copy takes about 12 s; the cut comes after about a third of it.
    (pool.master.base / "etc" / "slaves.conf").write_text("vsh-01:bwlimit=2048\nvsh-02\nvsh-03\n")
    with open(pool.master.base / "etc" / "vs-tools.conf", "a") as conf:
        conf.write("SSH_TIMEOUT=3\n")
    port = "p1"  # vsh-01's port on the pool's bridge (tests/poolhosts.py)
    copying = subprocess.Popen(
        ["nsenter", f"--target={pool.master.pid}", "--mount", "--net", "--",
         "vs-get", "--name", "web"],
        env={"PATH": SESSION_PATH, "LANG": "C.UTF-8"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        partial = _store(pool) / ".web.partial" / "root" / "root" / "data"
        deadline = time.monotonic() + 60
        while len(list(partial.glob("*.bin"))) < 8:
            assert copying.poll() is None and time.monotonic() < deadline, copying.communicate()
            time.sleep(0.1)
        _bridge(pool, "link", "set", port, "down")
        out, err = copying.communicate(timeout=60)
    finally:
        _bridge(pool, "link", "set", port, "up")
        if copying.poll() is None:
            copying.kill()  # by the PID this test started
            copying.wait()
    assert copying.returncode == 5, (out, err)
    assert "vsh-01" in err and out == ""
    assert not (_store(pool) / "web").exists()  # a cut copy is never a complete one
    kept = len(list(partial.glob("*.bin")))
    assert 8 <= kept < 24
    (pool.master.base / "etc" / "slaves.conf").write_text("vsh-01\nvsh-02\nvsh-03\n")
    # The cut run failed cleanly (it is not resumed: it ended), yet what it copied is kept.
    assert _journal(pool)[-1][2:] == ("copy root", "failed")
    again = pool.master.run("vs-get", "--name", "web").stdout.strip().split(":")
    sent_mb = float(again[2])
    assert sent_mb <= 24 - kept + 2, f"the rerun sent {sent_mb} MB, {kept} of 24 MB were there"
    assert describe_tree(_store(pool) / "web" / "root") == expected


def _bridge(pool: Pool, *argv: str) -> None:
    subprocess.run(["ip", "-n", pool.bridge_ns, *argv], check=True, capture_output=True)


# ---- D6: no room at the destination ------------------------------------------------------------


def test_d6_placement_and_preflight_refuse_a_full_slave_before_sending(pool: Pool) -> None:
    source = _create(pool.slave("vsh-01"))
    (source / "root" / "big").write_bytes(os.urandom(12 << 20))
    pool.master.run("vs-get", "--name", "web")
    three = pool.slave("vsh-03")
    three.run("mount", "-t", "tmpfs", "-o", "size=4m", "vstfull", "/var/lib/vservers")
    try:
        refused = pool.master.run("vs-put", "--name", "web", "--host", "vsh-03", check=False)
        assert refused.returncode == 4, refused.stderr
        assert "vsh-03" in refused.stderr and "free" in refused.stderr
        assert three.run("ls", "-A", "/var/lib/vservers").stdout == ""  # nothing sent
        (pool.master.base / "etc" / "slaves.conf").write_text("vsh-01:noselect\nvsh-02\nvsh-03\n")
        placed = pool.master.run("vs-put", "--name", "web")
        assert placed.stdout.startswith("vsh-02:web:")
        assert "placement: vsh-02 (free " in placed.stderr
        assert "vsh-01 is noselect" in placed.stderr
        assert "vsh-03 has " in placed.stderr and "disk free" in placed.stderr
    finally:
        three.run("umount", "/var/lib/vservers")


def test_d6_a_full_store_fails_the_get_and_the_source_keeps_running(pool: Pool) -> None:
    one = pool.slave("vsh-01")
    source = _create(one)
    (source / "root" / "big").write_bytes(os.urandom(12 << 20))
    one.run("vs-control", "--name", "web", "--start")
    pool.master.run("mkdir", "-p", "/var/lib/vs-tools/pool/store")
    pool.master.run("mount", "-t", "tmpfs", "-o", "size=4m", "vstfull",
                    "/var/lib/vs-tools/pool/store")  # fmt: skip
    try:
        failed = pool.master.run("vs-get", "--name", "web", check=False)
        assert failed.returncode == 5, failed.stderr
        assert "rsync" in failed.stderr
        assert pool.master.run("ls", "/var/lib/vs-tools/pool/store").stdout == ""  # no copy
    finally:
        pool.master.run("umount", "/var/lib/vs-tools/pool/store")
    assert _freezer_state(one) == "thawed"
    assert one.run("vs-exec", "-T", "web", "--", "cat", "/proc/1/comm").returncode == 0
    assert pool.master.run("vs-scan").stdout == "vsh-01:web:disabled:running\n"


# ---- D7: a corrupted copy is caught by the verification --------------------------------------


def _corrupt(path: Path) -> None:
    """Change a file's bytes keeping its size and times: rsync's quick check cannot see it."""
    info = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))


def test_d7_a_corrupted_copy_is_caught_and_repaired_and_the_source_stays(pool: Pool) -> None:
    source = _create(pool.slave("vsh-01"))
    fidelity_tree(source)
    expected = describe_tree(source)
    _killed(pool.master, "get:verify", "vs-get", "--name", "web")
    _corrupt(_store(pool) / ".web.partial" / "root" / "root" / "d1" / "file")
    got = pool.master.run("vs-get", "--name", "web")
    assert "1 files found different and copied again" in got.stderr
    assert describe_tree(_store(pool) / "web" / "root") == expected
    assert describe_tree(source) == expected
    # The same on the way out: what the slave received is corrupted before it is verified.
    _killed(pool.master, "put:verify", "vs-put", "--name", "web", "--host", "vsh-02")
    two = pool.slave("vsh-02")
    _corrupt(two.base / "roots" / ".web.receiving" / "root" / "d1" / "file")
    put = pool.master.run("vs-put", "--name", "web")
    assert "1 files found different and copied again" in put.stderr
    assert describe_tree(two.base / "roots" / "web") == expected


# ---- D15: hostile names -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["..", "-rf", "a/b", "x;id"])
def test_d15_hostile_names_are_refused_before_any_io(pool: Pool, name: str) -> None:
    for argv in (
        ["vs-get", f"--name={name}"],
        ["vs-put", f"--name={name}", "--host", "vsh-01"],
        ["vs-remove", f"--name={name}", "--host", "vsh-01"],
        ["vs-scan", f"--name={name}"],
    ):
        refused = pool.master.run(*argv, check=False)
        assert refused.returncode == 2 and "invalid guest name" in refused.stderr, argv
    assert not (pool.master.base / "state" / "pool").exists()  # not even the inventory
