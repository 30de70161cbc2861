"""vs-scan from the master over real SSH to three slaves (tests/poolhosts.py): each guest once,
in its state, the inventory refreshed; a slave that does not answer is reported and the others
still are; what the pool holds twice is reported."""

from __future__ import annotations

import json
import sqlite3
import subprocess

import pytest

from tests.poolhosts import Pool

pytestmark = [pytest.mark.privileged, pytest.mark.e2e]


def _create(pool: Pool, slave: str, name: str, ip: str, context: int) -> None:
    pool.slave(slave).run("vs-create", "--name", name, "--interface", ip, "--context", str(context))


def test_scan_lists_every_guest_of_every_slave(pool: Pool) -> None:
    _create(pool, "vsh-01", "web", "198.51.100.10", 101)
    _create(pool, "vsh-01", "db", "198.51.100.11", 102)
    _create(pool, "vsh-02", "mail", "198.51.100.20", 201)
    pool.slave("vsh-02").run("vs-control", "--name", "mail", "--start")
    scanned = pool.master.run("vs-scan")
    assert scanned.stdout.splitlines() == [
        "vsh-01:db:disabled:stopped",
        "vsh-01:web:disabled:stopped",
        "vsh-02:mail:disabled:running",
    ], scanned.stderr
    assert scanned.stderr == ""
    data = json.loads(pool.master.run("vs-scan", "--json").stdout)
    web = next(g for g in data["guests"] if g["vserver"] == "web")
    assert (web["ip"], web["context"], web["storage"]) == ("198.51.100.10", 101, "dir")
    assert web["disk_used_mb"] > 1
    assert data["unreachable"] == [] and data["conflicts"] == []
    only = pool.master.run("vs-scan", "--host", "vsh-02").stdout
    assert only == "vsh-02:mail:disabled:running\n"
    assert pool.master.run("vs-scan", "--name", "web").stdout == "vsh-01:web:disabled:stopped\n"
    # The inventory on the master holds what was seen.
    db = sqlite3.connect(pool.master.base / "state" / "pool" / "inventory.db")
    try:
        rows = db.execute("SELECT host, name, running FROM guests ORDER BY host, name").fetchall()
    finally:
        db.close()
    assert rows == [("vsh-01", "db", 1 - 1), ("vsh-01", "web", 0), ("vsh-02", "mail", 1)]


def test_an_unreachable_slave_is_reported_and_the_others_answer(pool: Pool) -> None:
    _create(pool, "vsh-01", "web", "198.51.100.10", 101)
    conf = pool.master.base / "etc" / "vs-tools.conf"
    saved = conf.read_text()
    slaves = pool.master.base / "etc" / "slaves.conf"
    listed = slaves.read_text()
    try:
        conf.write_text(saved + "SSH_TIMEOUT=2\n")
        slaves.write_text(listed + "vsh-09\n")  # resolves to nothing
        # vsh-03 is down: its link is cut, so ssh waits for its connect timeout.
        subprocess.run(["ip", "-n", pool.slave("vsh-03").netns, "link", "set", "eth0", "down"],
                       check=True)  # fmt: skip
        scanned = pool.master.run("vs-scan", check=False, timeout=60)
    finally:
        subprocess.run(["ip", "-n", pool.slave("vsh-03").netns, "link", "set", "eth0", "up"],
                       check=True)  # fmt: skip
        conf.write_text(saved)
        slaves.write_text(listed)
    assert scanned.returncode == 5
    assert scanned.stdout == "vsh-01:web:disabled:stopped\n"
    assert "vs-scan: vsh-03: vsh-03: unreachable:" in scanned.stderr
    assert "vs-scan: vsh-09: vsh-09: unreachable:" in scanned.stderr


def test_what_the_pool_holds_twice_is_reported(pool: Pool) -> None:
    _create(pool, "vsh-01", "web", "198.51.100.10", 101)
    _create(pool, "vsh-01", "db", "198.51.100.11", 102)
    _create(pool, "vsh-02", "web", "198.51.100.30", 301)  # the same name
    _create(pool, "vsh-03", "copy", "198.51.100.11", 102)  # db's address and context
    scanned = pool.master.run("vs-scan", check=False)
    assert scanned.returncode == 4
    conflicts = [line for line in scanned.stderr.splitlines() if "conflict" in line]
    assert conflicts == [
        "vs-scan: conflict: guest web is defined on vsh-01 and vsh-02",
        "vs-scan: conflict: address 198.51.100.11 is the address of db on vsh-01, copy on vsh-03",
        "vs-scan: conflict: context 102 is the context number of db on vsh-01, copy on vsh-03",
    ]
    for host, name in (("vsh-01", "web"), ("vsh-02", "web")):
        pool.slave(host).run("vs-control", "--name", name, "--start")
    running = pool.master.run("vs-scan", check=False).stderr
    assert "vs-scan: conflict: guest web runs on vsh-01 and vsh-02" in running
