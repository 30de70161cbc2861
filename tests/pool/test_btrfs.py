"""The pool with a btrfs slave (STORAGE=btrfs, its /var/lib/vservers a btrfs file system on a
loop device mounted in its own mount namespace): a guest moved onto it arrives as a subvolume
with every attribute; a running guest there is read from a read-only snapshot (vs-get,
vs-move), and nothing of the snapshots or of the moved guest is left behind."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.pool import on_btrfs
from tests.pool.test_copy import _create, _killed, describe_tree, fidelity_tree
from tests.poolhosts import Pool, PoolHost

pytestmark = [pytest.mark.privileged, pytest.mark.e2e]


@pytest.fixture
def btrfs_slave(pool: Pool, tmp_path: Path, run_prefix: str) -> Iterator[PoolHost]:
    """vsh-02 on btrfs."""
    with on_btrfs(pool.slave("vsh-02"), tmp_path / f"{run_prefix}-pool-btrfs.img") as host:
        yield host


@pytest.fixture
def btrfs_pair(pool: Pool, tmp_path: Path, run_prefix: str) -> Iterator[tuple[PoolHost, PoolHost]]:
    """vsh-02 and vsh-03 on btrfs."""
    with (
        on_btrfs(pool.slave("vsh-02"), tmp_path / f"{run_prefix}-pool-btrfs2.img") as two,
        on_btrfs(pool.slave("vsh-03"), tmp_path / f"{run_prefix}-pool-btrfs3.img") as three,
    ):
        yield two, three


def _roots(host: PoolHost) -> list[str]:
    return sorted(os.listdir(host.inside("/var/lib/vservers")))


def test_a_guest_moves_onto_btrfs_and_is_read_from_snapshots_there(
    pool: Pool, btrfs_slave: PoolHost
) -> None:
    one, two, three = pool.slave("vsh-01"), btrfs_slave, pool.slave("vsh-03")
    source = _create(one)
    fidelity_tree(source)
    expected = describe_tree(source / "root" / "d1")
    one.run("vs-control", "--name", "web", "--start")
    pool.master.run("vs-move", "--name", "web", "--dst_host", "vsh-02")
    arrived = two.inside("/var/lib/vservers/web")
    assert arrived.stat().st_ino == 256  # a subvolume
    assert describe_tree(arrived / "root" / "d1") == expected
    assert "STORAGE=btrfs" in (two.base / "guests" / "web" / "guest.conf").read_text()
    assert two.state("web") is not None
    # A running guest on btrfs is read from a read-only snapshot, dropped afterwards.
    got = pool.master.run("vs-get", "--name", "web").stdout.strip().split(":")
    assert got[4] == "from a snapshot"
    stored = pool.master.base / "state" / "pool" / "store" / "web" / "root" / "root" / "d1"
    assert describe_tree(stored) == expected
    moved = pool.master.run("vs-move", "--name", "web", "--dst_host", "vsh-03")
    assert "passes while it ran" in moved.stderr
    assert describe_tree(three.base / "roots" / "web" / "root" / "d1") == expected
    assert three.state("web") is not None
    # Nothing left on the btrfs slave: no subvolume, no snapshot, no NAME.moved.
    leftovers = [n for n in _roots(two) if n != ".snapshots"]
    assert leftovers == []
    snapshots = two.inside("/var/lib/vservers/.snapshots")
    assert not snapshots.exists() or os.listdir(snapshots) == []
    assert "web" not in two.run("btrfs", "subvolume", "list", "/var/lib/vservers").stdout


def test_between_btrfs_slaves_snapshots_are_sent_and_checked_whole_before_they_run(
    pool: Pool, btrfs_pair: tuple[PoolHost, PoolHost]
) -> None:
    """btrfs send/receive (incremental after the first pass) straight from slave to slave; a
    move killed before its final pass is run again: what the destination had received is
    removed, the guest sent anew and checked (Received UUID) before it starts there."""
    two, three = btrfs_pair
    _create(two)
    source = two.inside("/var/lib/vservers/web")
    fidelity_tree(source)
    # More than a settled pass moves: a second pass sends incrementally from the first.
    (source / "root" / "bulk").write_bytes(os.urandom(12 << 20))
    expected = describe_tree(source / "root" / "d1")
    two.run("vs-control", "--name", "web", "--start")
    _killed(pool.master, "move:final pass", "vs-move", "--name", "web", "--dst_host", "vsh-03")
    assert os.listdir(three.inside("/var/lib/vservers/.web.received")) != []
    moved = pool.master.run("vs-move", "--name", "web")
    assert "straight from vsh-02 to vsh-03 with btrfs send/receive" in moved.stderr
    # Back, while it runs: passes while it ran (the second one incremental), then the final.
    back = pool.master.run("vs-move", "--name", "web", "--dst_host", "vsh-02")
    assert "2 passes while it ran" in back.stderr or "3 passes while it ran" in back.stderr
    # The final send and the start went through the calls armed before the stop.
    assert "prepared ahead" not in back.stderr, back.stderr
    moved = pool.master.run("vs-move", "--name", "web", "--dst_host", "vsh-03")
    arrived = three.inside("/var/lib/vservers/web")
    assert arrived.stat().st_ino == 256  # a subvolume of its own, writable
    assert describe_tree(arrived / "root" / "d1") == expected
    assert three.state("web") is not None
    (arrived / "root" / "written-after").write_text("x")
    # Nothing left: no received snapshot there, no snapshot or moved copy here.
    assert [n for n in _roots(three) if n != ".snapshots"] == ["web"]
    assert [n for n in _roots(two) if n != ".snapshots"] == []
    for host in (two, three):
        snapshots = host.inside("/var/lib/vservers/.snapshots")
        assert not snapshots.exists() or os.listdir(snapshots) == []
    assert "web" not in two.run("btrfs", "subvolume", "list", "/var/lib/vservers").stdout
