"""STORAGE=lvm for real, inside the lab VM (this machine's kernel has no device-mapper):
tests/lab/test_lab.py boots the VM and runs this file there (VS_LAB_INSIDE=1); on the host the
module is skipped, as its outer test covers it.

A volume group on a loop device (both named with the run prefix, removed by the fixture also
on failure); guests made by vs-create from the busybox template: the logical volume mounted
while the guest runs and only then, its size the disk limit that bites, grown hot, shrunk when
stopped, snapshots mounted read-only, clones, a failed create that leaves no volume, and a
guest received as vs-put and vs-move send one (the slave's side, driven by vs-fonctions)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from tests.guests import Host
from vstools.backup.slave import stopped_view
from vstools.config.create import CreateConf
from vstools.config.networks import parse_networks
from vstools.config.values import StorageKind
from vstools.errors import HostError
from vstools.guest.create import CreateRequest, plan_create
from vstools.host.hostconfig import HostConfig
from vstools.paths import resolve_paths
from vstools.plan import apply_steps
from vstools.storage.base import is_mount_point
from vstools.storage.select import guest_storage, storage_for

if not os.environ.get("VS_LAB_INSIDE"):
    pytest.skip("runs inside the lab VM (tests/lab/test_lab.py boots it)", allow_module_level=True)

pytestmark = [pytest.mark.privileged, pytest.mark.e2e]

MB = 1 << 20
NETWORKS = "0,198.51.100.0/24,198.51.100.1\n"


def _sh(*argv: str, check: bool = True) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr}")
    return result.stdout


@pytest.fixture
def vg(run_prefix: str, tmp_path: Path) -> Iterator[str]:
    """A volume group of 640 MB (sparse: room for one xfs volume, whose minimum is 300 MB) on a
    loop device; the VM has no udev, so LVM makes its own device nodes (DM_DISABLE_UDEV)."""
    os.environ["DM_DISABLE_UDEV"] = "1"
    name = f"{run_prefix}vg"
    image = tmp_path / f"{run_prefix}-pv.img"
    with open(image, "wb") as handle:
        handle.truncate(640 * MB)
    device = _sh("losetup", "--find", "--show", str(image)).strip()
    try:
        _sh("pvcreate", "-q", device)
        _sh("vgcreate", "-q", name, device)
        yield name
    finally:
        for line in _sh("findmnt", "-rn", "-o", "TARGET", check=False).splitlines():
            if run_prefix in line or str(tmp_path) in line:
                _sh("umount", "--lazy", line, check=False)
        _sh("vgremove", "-ff", "-y", name, check=False)
        _sh("pvremove", "-ff", "-y", device, check=False)
        _sh("losetup", "--detach", device, check=False)
        image.unlink()


@pytest.fixture
def lvm_host(vg: str, host: Host) -> Host:
    """The test host with STORAGE=lvm on ``vg`` (after the VG, so torn down before it)."""
    host.env["DM_DISABLE_UDEV"] = "1"
    etc = Path(host.env["VS_ETC_DIR"])
    template = host.root / "busybox.tar"
    _sh("tar", "--numeric-owner", "-cf", str(template), "-C", str(host.template), ".")
    (etc / "networks.conf").write_text(NETWORKS)
    (etc / "create.conf").write_text(
        f"DEFAULT_TEMPLATE={template}\nSTORAGE=lvm\nLVM_VG={vg}\nSNAPSHOT_SIZE=16\n"
    )
    return host


def _lv_mb(volume: str) -> float:
    out = _sh("lvs", "--noheadings", "--nosuffix", "--units", "m", "-o", "lv_size", volume)
    return float(out.strip())


def _lvs(vg: str) -> list[str]:
    return sorted(_sh("lvs", "--noheadings", "-o", "lv_name", vg).split())


def test_an_lvm_guest_from_create_to_stop(lvm_host: Host, vg: str) -> None:
    host = lvm_host
    host.run("vs-create", "--name", "web", "--interface", "198.51.100.10", "--disk", "32")
    host.guests.append("web")
    conf = (host.guests_dir / "web" / "guest.conf").read_text()
    assert "STORAGE=lvm" in conf and f"LVM_VG={vg}" in conf and "LVM_FS=ext4" in conf
    assert _lv_mb(f"{vg}/web") == 32
    root = host.rootfs("web")
    assert not is_mount_point(root)  # vs-create unmounted it: mounted only while it runs
    host.run("vs-control", "--name", "web", "--start")
    assert is_mount_point(root)
    assert host.exec("web", "cat", "/etc/hostname") == "web\n"
    # The volume's size is the limit: writing past it fails inside the guest.
    fill = host.run(
        "vs-exec", "-T", "web", "--", "dd", "if=/dev/zero", "of=/root/fill", "bs=1M", "count=48",
        check=False,
    )  # fmt: skip
    assert fill.returncode != 0 and "No space left on device" in fill.stderr, fill.stderr
    host.exec("web", "rm", "/root/fill")
    # Grown hot: volume and file system, seen from inside.
    host.run("vs-limit", "--name", "web", "--disk", "96")
    assert _lv_mb(f"{vg}/web") == 96
    host.exec("web", "dd", "if=/dev/zero", "of=/root/fill", "bs=1M", "count=48")
    host.exec("web", "sync")
    (row,) = json.loads(host.run("vs-limit", "--name", "web", "--json").stdout)
    used, limit = (int(v) for v in row["disk"].split("/"))
    assert limit == 96 and 48 <= used < 70, row
    # A mounted ext4 cannot shrink: refused, nothing changed.
    refused = host.run("vs-limit", "--name", "web", "--disk", "64", check=False)
    assert refused.returncode == 4 and "stop the guest" in refused.stderr, refused.stderr
    assert (
        _lv_mb(f"{vg}/web") == 96
        and "DISK_LIMIT=96" in (host.guests_dir / "web" / "guest.conf").read_text()
    )
    # A snapshot of the running guest, mounted read-only, keeps the moment.
    host.exec("web", "sh", "-c", "echo before > /root/note")
    storage = storage_for(resolve_paths(host.env), StorageKind.LVM, lvm_vg=vg)
    snapshot = storage.create_snapshot("web", "backup1")
    assert snapshot.volume == f"{vg}/web.backup1" and is_mount_point(snapshot.path)
    host.exec("web", "sh", "-c", "echo after > /root/note")
    assert (snapshot.path / "root" / "note").read_text() == "before\n"
    with pytest.raises(OSError, match="Read-only file system"):
        (snapshot.path / "root" / "note").write_text("x")
    storage.remove_snapshot(snapshot)
    assert not snapshot.path.exists() and _lvs(vg) == ["web"]
    host.exec("web", "rm", "/root/fill")
    host.run("vs-control", "--name", "web", "--stop")
    assert not is_mount_point(root)
    # Stopped, it shrinks (e2fsck, resize2fs, lvreduce), but never below what it holds.
    host.run("vs-limit", "--name", "web", "--disk", "64")
    assert _lv_mb(f"{vg}/web") == 64
    (row,) = json.loads(host.run("vs-limit", "--name", "web", "--json").stdout)
    assert row["disk"].endswith("/64") and 0 < int(row["disk"].split("/")[0]) < 20, row
    too_small = host.run("vs-limit", "--name", "web", "--disk", "2", check=False)
    assert too_small.returncode == 5 and "resize2fs" in too_small.stderr, too_small.stderr
    assert "nothing to roll back" in too_small.stderr and _lv_mb(f"{vg}/web") == 64
    # A clone: a new volume with the files of a snapshot of its source.
    host.run(
        "vs-create", "--name", "copy", "--interface", "198.51.100.11", "--clone", "web",
        "--disk", "48",
    )  # fmt: skip
    host.guests.append("copy")
    assert _lvs(vg) == ["copy", "web"] and _lv_mb(f"{vg}/copy") == 48  # its snapshot is gone
    host.run("vs-control", "--name", "copy", "--start")
    assert host.exec("copy", "cat", "/root/note") == "after\n"
    assert host.exec("copy", "hostname") == "copy\n"
    host.run("vs-control", "--name", "copy", "--stop")
    assert not is_mount_point(host.rootfs("copy"))


def test_a_failed_lvm_create_leaves_no_volume(lvm_host: Host, vg: str, tmp_path: Path) -> None:
    host = lvm_host
    paths = resolve_paths(host.env)
    defaults = CreateConf.parse("c", Path(host.env["VS_ETC_DIR"], "create.conf").read_text())
    networks = parse_networks("n", NETWORKS)
    hostconf = HostConfig.given(paths, create=defaults, networks=networks)
    request = CreateRequest(name="web", ip=IPv4Address("198.51.100.10"), disk_mb=16)
    count = len(plan_create(hostconf, request, probe_network=False).steps)
    # directory, root, lvcreate, mkfs, mount, unpack, guest files, templates, unmount,
    # guest.conf, complete, counter
    assert count == 12
    before = sorted(str(p) for p in host.root.rglob("*"))
    for failing in range(count):
        plan = plan_create(hostconf, request, probe_network=False)

        def boom() -> None:
            raise OSError(28, "No space left on device")

        steps = [replace(s, apply=boom) if i == failing else s for i, s in enumerate(plan.steps)]
        with pytest.raises(HostError, match="No space left on device"):
            apply_steps(steps)
        assert _lvs(vg) == [], failing
        assert sorted(str(p) for p in host.root.rglob("*")) == before, failing
    # For real: a template larger than the volume; tar fails, everything is rolled back.
    big = tmp_path / "big"
    _sh("cp", "-a", str(host.template), str(big))
    (big / "blob").write_bytes(os.urandom(24 * MB))
    tarball = tmp_path / "big.tar"
    _sh("tar", "-cf", str(tarball), "-C", str(big), ".")
    failed = host.run(
        "vs-create", "--name", "web", "--interface", "198.51.100.10", "--disk", "16",
        "--template", str(tarball), check=False,
    )  # fmt: skip
    assert failed.returncode == 5 and "tar: ./blob" in failed.stderr, failed.stderr
    assert "rolled back: " in failed.stderr
    assert _lvs(vg) == [] and not host.rootfs("web").exists()
    assert not (host.guests_dir / "web").exists()


def test_vs_snapshot_on_lvm_create_list_revert_delete(lvm_host: Host, vg: str) -> None:
    """vs-snapshot on STORAGE=lvm: an lvcreate -s volume of the running guest, listed; the
    revert stops the guest, merges the snapshot into its volume and starts it again."""
    host = lvm_host
    host.run("vs-create", "--name", "web", "--interface", "198.51.100.10", "--disk", "32")
    host.guests.append("web")
    host.run("vs-control", "--name", "web", "--start")
    host.exec("web", "sh", "-c", "echo before > /root/note")
    made = host.run("vs-snapshot", "--name", "web", "--create", "before").stdout
    assert made.startswith("web:before:") and _lvs(vg) == ["web", "web.before"]
    host.run("vs-snapshot", "--name", "web", "--create", "spare")
    host.exec("web", "sh", "-c", "echo after > /root/note")
    listed = json.loads(host.run("vs-snapshot", "--json", "--name", "web").stdout)
    assert [s["label"] for s in listed] == ["before", "spare"]
    host.run("vs-snapshot", "--name", "web", "--delete", "spare")
    reverted = host.run("vs-snapshot", "--name", "web", "--revert", "before")
    assert "started again" in reverted.stderr
    assert host.exec("web", "cat", "/root/note") == "before\n"
    assert _lvs(vg) == ["web"]  # merged: LVM consumes the snapshot
    assert host.run("vs-snapshot", "--name", "web").stdout == ""
    host.run("vs-control", "--name", "web", "--stop")


BORG_PASSPHRASE = "vst-lab-passphrase"


def _borg(base: Path, *argv: str, cwd: Path | None = None) -> str:
    env = {**os.environ, "BORG_PASSPHRASE": BORG_PASSPHRASE, "BORG_BASE_DIR": str(base)}
    result = subprocess.run(
        ["borg", *argv], env=env, cwd=cwd, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"borg {' '.join(argv)}: {result.stderr}"
    return result.stdout


def test_lvm_guests_are_backed_up_from_snapshots_running_or_stopped(
    lvm_host: Host, vg: str, tmp_path: Path
) -> None:
    """vs-backup on LVM, with xfs on the volume (the other tests use ext4). Hot: what
    vs-backup has the slave run (``vs-fonctions backup_guest``, the master's secrets on stdin;
    the master's SSH side is the same for every storage and tested on the pool's hosts), into a
    real borg repository, while a writer runs in the guest: it archives an ``lvcreate -s``
    snapshot (xfs: mounted ``nouuid,norecovery``), removed afterwards, and the archive holds a
    still image. Stopped (cold, offline, and vs-get): the volume is not mounted then (its mount
    point is empty), so what reads the guest reads a read-only snapshot, removed afterwards."""
    host = lvm_host
    repo, base, key = tmp_path / "repo", tmp_path / "borg", tmp_path / "backup_key"
    _borg(base, "init", "--encryption", "repokey", str(repo))
    _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))  # BACKUP_SSH_KEY
    with open(Path(host.env["VS_ETC_DIR"]) / "vs-tools.conf", "a") as conf:
        conf.write(f"BACKUP_SSH_KEY={key}\n")
    with open(Path(host.env["VS_ETC_DIR"]) / "create.conf", "a") as create:
        create.write("LVM_FS=xfs\n")  # xfs: its snapshot mounts only with nouuid,norecovery
    host.run("vs-create", "--name", "web", "--interface", "198.51.100.10", "--disk", "300")
    host.guests.append("web")
    assert "TYPE=xfs" in _sh("blkid", "-o", "export", f"/dev/{vg}/web")
    host.run("vs-control", "--name", "web", "--start")
    writer = host.popen(
        "vs-exec", "-T", "web", "--", "sh", "-c", "echo kept > /root/note; i=0; while :; do "
        "echo $i >> /root/log; i=$((i+1)); usleep 999; done",
    )  # fmt: skip
    log = host.rootfs("web") / "root" / "log"  # the volume, mounted while the guest runs
    try:
        for _ in range(6000):
            if log.exists() and log.stat().st_size > 0:
                break
            time.sleep(0.01)
        secrets = {"repository": str(repo), "passphrase": BORG_PASSPHRASE, "known_hosts": "m x"}
        answer = host.run("vs-fonctions", "--json", "backup_guest", "web", "hot",
                          input=json.dumps(secrets), timeout=240).stdout  # fmt: skip
        hot = json.loads(answer)["result"]
        assert hot["how"] == "snapshot" and hot["held_s"] is None
        assert _lvs(vg) == ["web"] and writer.poll() is None  # snapshot gone, the writer on
    finally:
        host.run("vs-control", "--name", "web", "--stop")  # the writer ends with its guest
        writer.wait(timeout=60)
    _borg(base, "extract", f"{repo}::{hot['archive']}", "root", cwd=tmp_path)
    assert (tmp_path / "root" / "note").read_text() == "kept\n"
    lines = (tmp_path / "root" / "log").read_text().splitlines()
    assert lines and lines == [str(i) for i in range(len(lines))]  # a still, whole image

    assert not is_mount_point(host.rootfs("web")) and not (host.rootfs("web") / "root").exists()
    config = HostConfig.load(host.env)
    storage = guest_storage(config, config.guest_conf("web"))  # as vs-backup and vs-get find it
    with stopped_view(storage, "web") as view:
        assert is_mount_point(view) and (view / "root" / "note").read_text() == "kept\n"
        with pytest.raises(OSError, match="Read-only file system"):
            (view / "root" / "note").write_text("x")
    assert _lvs(vg) == ["web"] and not is_mount_point(host.rootfs("web"))


def test_a_guest_received_on_lvm_by_put_or_move(lvm_host: Host, vg: str, tmp_path: Path) -> None:
    """The slave's side of vs-put and vs-move on STORAGE=lvm: receive_begin makes a volume of
    the disk limit under a name no guest has, mounted where rsync writes; a transfer cut off
    (its mount gone, as after a reboot) resumes in the same volume; receive_start renames it
    to the guest's, as a commit killed after the rename is finished, and starts the guest from
    it with its size as the disk limit. Moved away again, its volume is kept aside as
    web.moved, then removed with its snapshot. A begin with no room in the group is refused; a
    begin killed before mkfs, then aborted, leaves no volume."""
    host = lvm_host

    def fonction(*argv: str) -> Any:
        return json.loads(host.run("vs-fonctions", "--json", *argv, timeout=180).stdout)["result"]

    # What a sender's rsync brings: a busybox root with a hard link, an xattr and a high uid.
    tree = tmp_path / "sent"
    _sh("cp", "-a", str(host.template), str(tree))
    (tree / "root" / "marker").write_text("received\n")
    os.link(tree / "root" / "marker", tree / "root" / "linked")
    os.setxattr(tree / "root" / "marker", "trusted.vst", b"kept")
    (tree / "root" / "high").write_text("x")
    os.chown(tree / "root" / "high", 200_000, 200_000)
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "guest.conf").write_text(
        "NAME=web\nCONTEXT=10001\nIP=198.51.100.10\nRSS_LIMIT=64\nDISK_LIMIT=32\nTMPFS_LIMIT=8\n"
        "PROC_LIMIT=64\nCPU_LIMIT=1/2\nSTORAGE=dir\n"
    )
    rsync = ["rsync", "-aHAXS", "--numeric-ids"]
    places = fonction("receive_begin", "web", "32")
    place = Path(str(places["root"]))
    assert places["fresh"] is True and places["storage"] == "lvm"
    assert _lvs(vg) == ["web.receiving"] and _lv_mb(f"{vg}/web.receiving") == 32
    assert is_mount_point(place) and place.name == ".web.receiving"
    # Cut off after the first files: the volume is kept and mounted again, not fresh.
    _sh(*rsync, f"{tree}/bin/", f"{place}/bin/")
    _sh("umount", str(place))
    again = fonction("receive_begin", "web", "32")
    assert again == {**places, "fresh": False} and (place / "bin" / "busybox").is_file()
    _sh(*rsync, "--delete", f"{tree}/", f"{place}/")
    _sh(*rsync, f"{conf}/", f"{places['conf']}/")
    # A commit killed right after its rename; receive_start finishes it and starts the guest.
    _sh("umount", str(place))
    _sh("lvrename", vg, "web.receiving", "web")
    host.guests.append("web")
    fonction("receive_start", "web")
    root = host.rootfs("web")
    assert _lvs(vg) == ["web"] and is_mount_point(root) and not place.exists()
    written = (host.guests_dir / "web" / "guest.conf").read_text()
    assert "STORAGE=lvm" in written and f"LVM_VG={vg}" in written and "DISK_LIMIT=32" in written
    marker, linked, high = (os.stat(root / "root" / n) for n in ("marker", "linked", "high"))
    assert marker.st_ino == linked.st_ino and high.st_uid == 200_000
    assert os.getxattr(root / "root" / "marker", "trusted.vst") == b"kept"
    # Started from its volume, whose size is the disk limit.
    fill = host.run(
        "vs-exec", "-T", "web", "--", "sh", "-c",
        "cat /root/marker && dd if=/dev/zero of=/root/fill bs=1M count=48", check=False,
    )  # fmt: skip
    assert fill.stdout == "received\n" and "No space left on device" in fill.stderr, fill.stderr
    host.run("vs-control", "--name", "web", "--stop")
    assert not is_mount_point(root) and root.is_dir() and _lvs(vg) == ["web"]
    # Moved away again (vs-move's source side), with a snapshot of its stopped volume: held,
    # its volume renamed web.moved as its mount point is, then removed with its snapshot.
    storage = storage_for(resolve_paths(host.env), StorageKind.LVM, lvm_vg=vg)
    snapshot = storage.create_snapshot("web", "vspool")
    assert (snapshot.path / "root" / "marker").read_text() == "received\n"
    fonction("move_hold", "web", "vsh-02")
    kept = fonction("move_keep", "web")
    assert _lvs(vg) == ["web.moved", "web.vspool"] and not root.exists()
    assert Path(kept["root"]).is_dir() and not is_mount_point(Path(kept["root"]))
    fonction("move_drop", "web")
    assert _lvs(vg) == [] and not snapshot.path.exists()
    assert not Path(kept["root"]).exists() and not Path(kept["conf"]).exists()
    # No room in the group for a volume of that limit: refused before anything is made.
    full = host.run("vs-fonctions", "--json", "receive_begin", "db", "1024", check=False)
    assert full.returncode == 5 and "MB free, 1024 MB needed" in full.stderr, full.stderr
    assert _lvs(vg) == [] and not (host.rootfs(".db.receiving")).exists()
    # A begin killed between lvcreate and mkfs: the next one makes the file system; an abort
    # then removes the volume and its mount point.
    _sh("lvcreate", "-q", "--yes", "-L", "16m", "-n", "db.receiving", vg)
    places = fonction("receive_begin", "db", "16")
    assert places["fresh"] is False and is_mount_point(Path(str(places["root"])))
    fonction("receive_abort", "db")
    assert _lvs(vg) == [] and not Path(str(places["root"])).exists()
    assert not Path(str(places["conf"])).exists()
