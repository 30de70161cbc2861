"""A guest's root arriving by btrfs send/receive (vstools.guest.receive): the snapshot becomes
the guest's receiving root only once it arrived whole (its Received UUID the source's UUID), a
cut stream is refused and leaves the place as it was, and the received snapshots are removed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.guests import btrfs_fs  # noqa: F401 - the fixture
from vstools.config.settings import Settings
from vstools.errors import StateError
from vstools.guest.receive import received_clear, received_dir, received_take, receiving
from vstools.host.hostconfig import HostConfig
from vstools.paths import Paths
from vstools.storage.btrfs import subvolume_uuids

pytestmark = pytest.mark.privileged


def _btrfs(*argv: str, stream: bytes | None = None) -> bytes:
    return subprocess.run(["btrfs", *argv], input=stream, check=True, capture_output=True).stdout


def test_only_a_snapshot_received_whole_becomes_the_root(btrfs_fs: Path) -> None:  # noqa: F811
    roots = btrfs_fs / "vservers"
    roots.mkdir(mode=0o700)
    paths = Paths(
        btrfs_fs / "etc", btrfs_fs / "guests", roots, btrfs_fs / "state", btrfs_fs / "run"
    )
    host = HostConfig.given(paths, Settings())
    source = roots / "web"
    _btrfs("subvolume", "create", str(source))
    (source / "file").write_bytes(b"x" * 3_000_000)
    snapshot = roots / "web.vspool0"
    _btrfs("subvolume", "snapshot", "-r", str(source), str(snapshot))
    uuid = subvolume_uuids(snapshot)[0]
    stream = _btrfs("send", "-q", str(snapshot))
    place = receiving(host, "web")[0]
    _btrfs("subvolume", "create", str(place))
    received = received_dir(host, "web")
    received.mkdir(mode=0o700)
    # A stream cut halfway: btrfs receive fails, and what it made is not taken.
    half = stream[: len(stream) // 2]
    cut = subprocess.run(["btrfs", "receive", "-E", "1", str(received)], input=half,
                         capture_output=True, check=False)  # fmt: skip
    assert cut.returncode != 0
    with pytest.raises(StateError, match="not whole"):
        received_take(host, "web", "web.vspool0", uuid)
    assert list(place.iterdir()) == []
    with pytest.raises(StateError, match="nothing named"):
        received_take(host, "web", "other.vspool0", uuid)
    received_clear(host, "web")
    received.mkdir(mode=0o700)
    _btrfs("receive", str(received), stream=stream)
    assert received_take(host, "web", "web.vspool0", uuid) == {"root": str(place)}
    assert (place / "file").read_bytes() == b"x" * 3_000_000
    (place / "written").write_text("writable")  # a writable snapshot, not the received one
    # What it replaced waits in the received directory, removed once the guest runs.
    assert sorted(p.name.split("-")[0] for p in received.iterdir()) == ["replaced", "web.vspool0"]
    received_clear(host, "web")
    assert not received.exists() and (place / "file").is_file()
