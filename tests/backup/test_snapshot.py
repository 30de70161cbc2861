"""vs-snapshot on a btrfs slave of the test pool, with a writer running in the guest: create,
list, revert (the running guest stopped and started again, its root what the snapshot held),
delete; a clear refusal on dir; the toolkit's own snapshot tags refused as labels."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.pool.test_copy import _create
from tests.poolhosts import SESSION_PATH, Pool, PoolHost

pytestmark = [pytest.mark.privileged, pytest.mark.e2e]


def _writer(host: PoolHost) -> subprocess.Popen[str]:
    """A process in the guest appending a line to /root/log every 20 ms."""
    return subprocess.Popen(
        ["nsenter", f"--target={host.pid}", "--mount", "--net", "--", "vs-exec", "-T", "web",
         "--", "sh", "-c", "while :; do echo x >> /root/log; sleep 0.02; done"],
        env={"PATH": SESSION_PATH, "VS_NO_SYSTEMD": "1", "HOME": "/root"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip


def _lines(host: PoolHost) -> int:
    log = host.run("vs-exec", "-T", "web", "--", "cat", "/root/log", check=False)
    return len(log.stdout.splitlines()) if log.returncode == 0 else 0


def _wait_lines(host: PoolHost, count: int) -> None:
    """Until the writer has written more than ``count`` lines (bounded: it writes 50 a second)."""
    for _ in range(600):
        if _lines(host) > count:
            return
        time.sleep(0.05)
    raise AssertionError(f"the writer did not get past {count} lines")


def test_snapshots_on_btrfs_with_a_running_writer(pool: Pool, btrfs_slave: PoolHost) -> None:
    two = btrfs_slave
    two.run("vs-create", "--name", "web", "--interface", "198.51.100.10", "--context", "101")
    two.run("vs-control", "--name", "web", "--start")
    writer = _writer(two)
    try:
        _wait_lines(two, 5)
        made = two.run("vs-snapshot", "--name", "web", "--create", "before").stdout
        assert made.startswith("web:before:/var/lib/vservers/.snapshots/web.before")
        snapshot = two.inside("/var/lib/vservers/.snapshots/web.before/root/log")
        at_snapshot = len(snapshot.read_text().splitlines())
        unnamed = two.run("vs-snapshot", "--name", "web", "--create").stdout.split(":")[1]
        assert unnamed.startswith("s") and unnamed.endswith("Z")
        listed = json.loads(two.run("vs-snapshot", "--json", "--name", "web", "--list").stdout)
        assert [s["label"] for s in listed] == sorted(["before", unnamed])
        _wait_lines(two, at_snapshot + 10)
    finally:
        writer.kill()
        writer.wait()
    dry = two.run("vs-snapshot", "--name", "web", "--revert", "before", "--dry-run")
    assert "would: stop web" in dry.stderr and two.state("web") is not None
    reverted = two.run("vs-snapshot", "--name", "web", "--revert", "before")
    assert "started again" in reverted.stderr
    assert two.state("web") is not None
    assert _lines(two) == at_snapshot  # the root is what the snapshot held
    assert two.run("btrfs", "subvolume", "show", "/var/lib/vservers/web").returncode == 0
    assert "web.before" in two.run("btrfs", "subvolume", "list", "/var/lib/vservers").stdout
    two.run("vs-snapshot", "--name", "web", "--delete", "before")
    two.run("vs-snapshot", "--name", "web", "--delete", unnamed)
    assert two.run("vs-snapshot", "--name", "web").stdout == ""
    gone = two.run("vs-snapshot", "--name", "web", "--delete", "before", check=False)
    assert gone.returncode == 4 and "no snapshot before" in gone.stderr
    leftovers = two.run("btrfs", "subvolume", "list", "/var/lib/vservers").stdout
    assert "revert" not in leftovers and "web.before" not in leftovers


def test_snapshots_are_refused_on_dir_and_internal_labels(pool: Pool) -> None:
    one = pool.slave("vsh-01")
    _create(one)
    refused = one.run("vs-snapshot", "--name", "web", "--create", "x", check=False)
    assert refused.returncode == 2 and "STORAGE=dir has no snapshots" in refused.stderr
    reserved = one.run("vs-snapshot", "--name", "web", "--create", "vsbackup", check=False)
    assert reserved.returncode == 2 and "reserved" in reserved.stderr
