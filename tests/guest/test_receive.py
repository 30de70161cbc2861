"""A guest's root arriving (vstools.guest.receive). By btrfs send/receive: the snapshot becomes
the guest's receiving root only once it arrived whole (its Received UUID the source's UUID), a
cut stream is refused and leaves the place as it was, and the received snapshots are removed.
On lvm (device-mapper is the VM lab's: here at the run seam): a volume of the disk limit made,
kept and mounted again, renamed to the guest's at the commit, removed by an abort; and a guest
moved off lvm, its volume kept aside as NAME.moved, then removed."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.guests import btrfs_fs  # noqa: F401 - the fixture
from vstools.config.create import CreateConf
from vstools.config.settings import Settings
from vstools.errors import CommandError, HostError, StateError
from vstools.guest import moving
from vstools.guest.moving import drop_moved, hold, keep_moved, moved_paths
from vstools.guest.receive import (
    btrfs_receive,
    check_room,
    receive_abort,
    receive_begin,
    receive_commit,
    received_clear,
    received_dir,
    received_take,
    receiving,
)
from vstools.host.hostconfig import HostConfig
from vstools.host.run import Result
from vstools.paths import Paths
from vstools.storage import base, lvm
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
    host = HostConfig.given(paths, Settings(), create=CreateConf.parse("c", "STORAGE=btrfs\n"))
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


CONF = (
    "NAME={name}\nCONTEXT={context}\nIP=198.51.100.{ip}\nRSS_LIMIT=64\nDISK_LIMIT=32\n"
    "TMPFS_LIMIT=8\nPROC_LIMIT=64\nCPU_LIMIT=1/2\n"
)


class FakeLvm:
    """LVM at vstools.host.run's seam (this kernel has no device-mapper: the real volumes are
    the VM lab's): volumes (with or without a file system) and mounts, and each command."""

    def __init__(self) -> None:
        self.volumes: dict[str, bool] = {}  # name -> has a file system
        self.mounted: set[str] = set()
        self.calls: list[str] = []

    def run(self, argv: list[str], *, check: bool = True, **_: object) -> Result:
        self.calls.append(" ".join(argv))
        tool, last = argv[0], argv[-1]
        lv = last.rsplit("/", 1)[-1]
        ok, out = True, ""
        if tool == "lvs":
            ok = lv in self.volumes
        elif tool == "vgs":
            out = "  240.00\n"
        elif tool == "blkid":
            ok, out = self.volumes[lv], "ext4\n"
        elif tool == "lvcreate":
            self.volumes[argv[argv.index("-n") + 1]] = False
        elif tool.startswith("mkfs."):
            self.volumes[lv] = True
        elif tool == "mount":
            self.mounted.add(last)
        elif tool == "umount":
            self.mounted.discard(last)
        elif tool == "lvrename":
            self.volumes[argv[3]] = self.volumes.pop(argv[2])
        elif tool == "lvremove":
            del self.volumes[lv]
        result = Result(tuple(argv), 0 if ok else 2, out if ok else "", "")
        if check and not ok:
            raise CommandError(" ".join(argv), 2, "")
        return result


def test_receiving_on_lvm_is_a_volume_made_kept_renamed_or_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeLvm()
    for module in (base, lvm):
        monkeypatch.setattr(module, "run", fake.run)
    monkeypatch.setattr(base, "is_mount_point", lambda p: str(p) in fake.mounted)
    monkeypatch.setattr(lvm, "is_mount_point", lambda p: str(p) in fake.mounted)
    monkeypatch.setattr(lvm, "which", lambda tool: f"/usr/sbin/{tool}")
    paths = Paths(tmp_path / "etc", tmp_path / "guests", tmp_path / "vservers",
                  tmp_path / "state", tmp_path / "run")  # fmt: skip
    create = CreateConf.parse("create.conf", "STORAGE=lvm\nLVM_VG=vg0\n")
    host = HostConfig.given(paths, Settings(), create=create)
    place, conf = receiving(host, "web")
    places = receive_begin(host, "web", 32)
    assert places == {"root": str(place), "conf": str(conf), "storage": "lvm", "fresh": True}
    assert fake.calls[-3:] == [
        "lvcreate --yes --wipesignatures y -L 32m -n web.receiving vg0",
        "mkfs.ext4 -q -F /dev/vg0/web.receiving",
        f"mount -t ext4 -o nodev /dev/vg0/web.receiving {place}",
    ]
    # Cut off (its mount gone): kept and mounted again; killed before mkfs: given one.
    fake.mounted.clear()
    fake.volumes["web.receiving"] = False
    assert receive_begin(host, "web", 32)["fresh"] is False
    assert fake.volumes == {"web.receiving": True} and str(place) in fake.mounted
    (conf / "guest.conf").write_text(CONF.format(name="web", context=101, ip=10) + "STORAGE=dir\n")
    assert check_room(host, 300) == {
        "free_mb": 240,
        "problems": ["volume group vg0 has 240 MB free, 300 MB needed"],
    }
    assert receive_commit(host, "web") == {"root": str(paths.guest_root("web")),
                                           "conf": str(paths.guest_dir("web"))}  # fmt: skip
    assert "lvrename vg0 web.receiving web" in fake.calls
    assert fake.volumes == {"web": True} and not fake.mounted  # mounted only while it runs
    assert paths.guest_root("web").is_dir() and not place.exists()
    written = (paths.guest_dir("web") / "guest.conf").read_text()
    assert "STORAGE=lvm" in written and "LVM_VG=vg0" in written
    assert receive_commit(host, "web")["conf"] == str(paths.guest_dir("web"))  # done already
    # No room in the group: refused before anything is made.
    with pytest.raises(HostError, match="volume group vg0 has 240 MB free, 300 MB needed"):
        receive_begin(host, "db", 300)
    assert fake.volumes == {"web": True} and not receiving(host, "db")[1].exists()
    # A second guest: a volume there already with the guest's name is never overwritten.
    receive_begin(host, "db", 16)
    (receiving(host, "db")[1] / "guest.conf").write_text(CONF.format(name="db", context=102, ip=11))
    fake.volumes["db"] = True
    with pytest.raises(StateError, match="vg0/db exists already"):
        receive_commit(host, "db")
    del fake.volumes["db"]
    receive_abort(host, "db")
    assert fake.volumes == {"web": True} and not any(receiving(host, "db")[0].parent.glob(".db*"))
    with pytest.raises(StateError, match="STORAGE=lvm here: btrfs send/receive needs btrfs"):
        received_take(host, "db", "db.vspool0", "uuid")


def test_moved_off_lvm_the_volume_is_kept_aside_then_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vs-move's source side on lvm: the volume renamed NAME.moved as its mount point is, then
    removed (its snapshots with it, once their mounts are gone)."""
    fake = FakeLvm()
    for module in (base, lvm):
        monkeypatch.setattr(module, "run", fake.run)
    monkeypatch.setattr(base, "is_mount_point", lambda p: str(p) in fake.mounted)
    monkeypatch.setattr(lvm, "is_mount_point", lambda p: str(p) in fake.mounted)
    monkeypatch.setattr(moving, "is_mount_point", lambda p: str(p) in fake.mounted)
    monkeypatch.setattr(moving, "unmount_root", lambda p: fake.mounted.discard(str(p)))
    paths = Paths(tmp_path / "etc", tmp_path / "guests", tmp_path / "vservers",
                  tmp_path / "state", tmp_path / "run")  # fmt: skip
    host = HostConfig.given(paths, Settings())
    directory = paths.guest_dir("web")
    directory.mkdir(parents=True)
    (directory / "guest.conf").write_text(
        CONF.format(name="web", context=101, ip=10) + "STORAGE=lvm\nLVM_VG=vg0\n"
    )
    paths.guest_root("web").mkdir(parents=True)  # the empty mount point of a stopped guest
    snapshot = paths.root_dir / ".snapshots" / "web.before"
    snapshot.mkdir(parents=True)
    fake.mounted.add(str(snapshot))
    fake.volumes = {"web": True, "web.before": True}
    hold(host, "web", "vsh-02")
    kept_dir, kept_root = moved_paths(host, "web")
    assert keep_moved(host, "web") == {"conf": str(kept_dir), "root": str(kept_root)}
    assert "lvrename vg0 web web.moved" in fake.calls and kept_root.is_dir()
    assert keep_moved(host, "web")["root"] == str(kept_root)  # again: nothing left to do
    assert fake.calls.count("lvrename vg0 web web.moved") == 1
    drop_moved(host, "web")
    assert "lvremove --yes vg0/web.moved" in fake.calls and not fake.mounted
    assert not kept_root.exists() and not kept_dir.exists() and not snapshot.exists()


def _receive_through_the_door(host: HostConfig, name: str, stream: bytes) -> tuple[int, str]:
    """What ``push_receive`` does for ``btrfs-receive`` (vstools.guest.receive.btrfs_receive),
    in a child process fed ``stream`` on stdin: its exit status and what it said."""
    with tempfile.TemporaryFile() as data, tempfile.TemporaryFile() as said:
        data.write(stream)
        data.seek(0)
        pid = os.fork()
        if pid == 0:  # the child: it never returns into pytest
            code = 70
            try:
                os.dup2(data.fileno(), 0)
                os.dup2(said.fileno(), 1)
                os.dup2(said.fileno(), 2)
                btrfs_receive(host, name)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 70
            except BaseException as exc:  # reported to the parent, as vs-fonctions does
                os.write(2, f"refused: {exc}\n".encode())
                code = 4
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        said.seek(0)
        return os.waitstatus_to_exitcode(status), said.read().decode(errors="replace")


def _holds(tree: Path, data: bytes) -> list[Path]:
    return [p for p in tree.rglob("*") if p.is_file() and data in p.read_bytes()]


def test_a_hostile_stream_cannot_snapshot_or_clone_another_guests_subvolume(
    btrfs_fs: Path,  # noqa: F811
) -> None:
    """btrfs receive --chroot confines a stream's paths, not its UUIDs: a snapshot's parent and
    a clone's source are looked up in the whole file system. While another guest is being
    received here (its snapshot read-only, its sender's UUID as Received UUID), a sender that
    knows that UUID sends web as a snapshot of it, or with a clone of its extents. Bare
    ``btrfs receive --chroot`` takes both (the other guest's data lands in web); the slave's
    door refuses both, and takes the honest incremental stream."""
    roots = btrfs_fs / "vservers"
    roots.mkdir(mode=0o700)
    paths = Paths(
        btrfs_fs / "etc", btrfs_fs / "guests", roots, btrfs_fs / "state", btrfs_fs / "run"
    )
    host = HostConfig.given(paths, Settings(), create=CreateConf.parse("c", "STORAGE=btrfs\n"))
    secret = b"the other guest's secret\n" * 40000  # 1 MB: whole extents to clone
    sender = btrfs_fs / "sender"
    sender.mkdir()
    _btrfs("subvolume", "create", str(sender / "other"))
    (sender / "other" / "secret").write_bytes(secret)
    _btrfs("subvolume", "snapshot", "-r", str(sender / "other"), str(sender / "other.vspool0"))
    _btrfs("subvolume", "create", str(sender / "web"))
    (sender / "web" / "hello").write_text("hello\n")
    _btrfs("subvolume", "snapshot", "-r", str(sender / "web"), str(sender / "web.vspool0"))
    subprocess.run(["cp", "--reflink=always", str(sender / "other.vspool0" / "secret"),
                    str(sender / "web" / "stolen")], check=True)  # fmt: skip
    _btrfs("subvolume", "snapshot", "-r", str(sender / "web"), str(sender / "web.vspool1"))
    sends = {
        "other": ["other.vspool0"],
        "web": ["web.vspool0"],
        "honest": ["-p", "web.vspool0", "web.vspool1"],
        "clone": ["-p", "web.vspool0", "-c", "other.vspool0", "web.vspool1"],
        "snapshot": ["-p", "other.vspool0", "web.vspool1"],
    }
    streams = {
        name: _btrfs("send", "-q", *(a if a.startswith("-") else str(sender / a) for a in argv))
        for name, argv in sends.items()
    }
    for made in ("web.vspool1", "web.vspool0", "web", "other.vspool0", "other"):
        _btrfs("subvolume", "delete", str(sender / made))
    # The other guest, being received here (its received snapshot read-only).
    (roots / ".other.receiving").mkdir()
    received_dir(host, "other").mkdir(mode=0o700)
    _btrfs("receive", str(received_dir(host, "other")), stream=streams["other"])
    assert _holds(received_dir(host, "other"), secret)
    # The control: the bare tool, chrooted, takes both attacks.
    for attack, first in (("clone", "web"), ("snapshot", None)):
        bare = btrfs_fs / f"bare-{attack}"
        bare.mkdir()
        for stream in filter(None, (streams.get(first or ""), streams[attack])):
            _btrfs("receive", "--chroot", str(bare), stream=stream)
        assert _holds(bare, secret), f"the {attack} stream is no attack"
        for made in ("web.vspool1", "web.vspool0"):
            if (bare / made).exists():
                _btrfs("subvolume", "delete", str(bare / made))
    # Through the door: web is being received, its first pass taken.
    place = receiving(host, "web")[0]
    _btrfs("subvolume", "create", str(place))
    assert _receive_through_the_door(host, "web", streams["web"])[0] == 0
    code, said = _receive_through_the_door(host, "web", streams["clone"])
    assert code != 0 and "clone from the subvolume" in said, said
    assert not _holds(received_dir(host, "web"), secret)
    started = received_dir(host, "web") / "web.vspool1"  # refused before or after it was made
    if started.exists():
        assert subvolume_uuids(started)[1] == "-"  # never whole: never taken
        _btrfs("subvolume", "delete", str(started))
    code, said = _receive_through_the_door(host, "web", streams["snapshot"])
    assert code != 0 and "snapshot of the subvolume" in said, said
    assert sorted(p.name for p in received_dir(host, "web").iterdir()) == ["web.vspool0"]
    # The honest incremental stream passes (its data carries the file: the sender has it).
    code, said = _receive_through_the_door(host, "web", streams["honest"])
    assert code == 0, said
    assert (received_dir(host, "web") / "web.vspool1" / "stolen").read_bytes() == secret
    for name in ("web", "other"):
        received_clear(host, name)
