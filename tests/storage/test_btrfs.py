"""STORAGE=btrfs for real, on a btrfs made on a loop device for each test (tests/guests.py
``btrfs_host``): guests created from a template as subvolumes, clones as snapshots that share
their extents, the qgroup limit biting a guest that writes past it, vs-limit --disk changing it
hot, usage from the qgroup, read-only snapshots, and rollback leaving no subvolume."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.guests import Host
from vstools.config.values import StorageKind
from vstools.errors import HostError
from vstools.paths import resolve_paths
from vstools.storage.btrfs import BtrfsStorage, check_btrfs, qgroup_referenced
from vstools.storage.select import storage_for

pytestmark = [pytest.mark.privileged, pytest.mark.e2e]

MB = 1 << 20


def _configure(host: Host, extra: str = "") -> Path:
    """create.conf with STORAGE=btrfs and the busybox template as a tar archive."""
    etc = Path(host.env["VS_ETC_DIR"])
    template = host.root / "busybox.tar"
    if not template.exists():
        subprocess.run(
            ["tar", "--numeric-owner", "-cf", str(template), "-C", str(host.template), "."],
            check=True,
        )
    (etc / "create.conf").write_text(f"DEFAULT_TEMPLATE={template}\nSTORAGE=btrfs\n{extra}")
    return template


def _btrfs(*argv: str) -> str:
    return subprocess.run(["btrfs", *argv], check=True, capture_output=True, text=True).stdout


def _subvolume(path: Path) -> dict[str, str]:
    """`btrfs subvolume show` as a dict (Name, UUID, Parent UUID, Subvolume ID, Flags...)."""
    rows = {}
    for line in _btrfs("subvolume", "show", str(path)).splitlines()[1:]:
        key, _, value = line.strip().partition(":")
        rows[key.strip()] = value.strip()
    return rows


def _subvolumes(host: Host) -> list[str]:
    root = Path(host.env["VS_ROOT_DIR"])
    return sorted(line.split()[-1] for line in _btrfs("subvolume", "list", str(root)).splitlines())


def _sync(host: Host) -> None:
    """Qgroup figures are updated at a transaction commit: make one now."""
    _btrfs("filesystem", "sync", host.env["VS_ROOT_DIR"])


def _create(host: Host, name: str, ip: str, *extra: str) -> float:
    started = time.monotonic()
    host.run("vs-create", "--name", name, "--interface", ip, *extra)
    host.guests.append(name)
    return time.monotonic() - started


def test_create_from_a_template_and_clone_as_a_snapshot(btrfs_host: Host) -> None:
    host = btrfs_host
    _configure(host)
    created_s = _create(host, "web", "198.51.100.10", "--disk", "64")
    web = _subvolume(host.rootfs("web"))
    assert "readonly" not in web.get("Flags", "")
    assert "STORAGE=btrfs" in (host.guests_dir / "web" / "guest.conf").read_text()
    (host.rootfs("web") / "root" / "data").write_bytes(os.urandom(8 * MB))
    cloned_s = _create(host, "copy", "198.51.100.11", "--clone", "web", "--disk", "48")
    copy = _subvolume(host.rootfs("copy"))
    assert copy["Parent UUID"] == web["UUID"]  # a snapshot of web, not a copy of its files
    assert (host.rootfs("copy") / "etc" / "hostname").read_text() == "copy\n"
    assert (host.rootfs("copy") / "root" / "data").read_bytes() == (
        host.rootfs("web") / "root" / "data"
    ).read_bytes()
    _sync(host)
    # Shared extents: the clone references the 8 MB of data but holds almost nothing alone.
    shown = _btrfs("qgroup", "show", "--raw", "-re", "-f", str(host.rootfs("copy")))
    qgroup = shown.splitlines()[-1].split()
    referenced, exclusive, limit = int(qgroup[1]), int(qgroup[2]), int(qgroup[3])
    assert referenced > 8 * MB and exclusive < MB, shown
    assert limit == 48 * MB
    print(f"btrfs: create from the template {created_s:.2f} s, clone {cloned_s:.2f} s")
    # Both run (btrfs roots need no mount), the clone in a user namespace: its subvolume is
    # mounted idmapped, and what its root writes is owned by 0 on disk.
    conf = host.guests_dir / "copy" / "guest.conf"
    conf.write_text(conf.read_text().replace("USERNS=no", "USERNS=yes"))
    host.run("vs-control", "--name", "web", "--start")
    host.run("vs-control", "--name", "copy", "--start")
    assert host.exec("copy", "hostname") == "copy\n"
    context = int(conf.read_text().split("CONTEXT=")[1].split()[0])
    uid_map = host.exec("copy", "cat", "/proc/self/uid_map").split()
    assert uid_map == ["0", str(context * 65536), "65536"]
    host.exec("copy", "touch", "/root/mine")
    assert (host.rootfs("copy") / "root" / "mine").stat().st_uid == 0
    assert host.exec("web", "cat", "/etc/hostname") == "web\n"
    host.run("vs-control", "--name", "copy", "--stop")
    host.run("vs-control", "--name", "web", "--stop")


def test_the_disk_limit_bites_and_grows_hot(btrfs_host: Host) -> None:
    host = btrfs_host
    _configure(host)
    _create(host, "web", "198.51.100.10", "--disk", "24")
    host.run("vs-control", "--name", "web", "--start")
    # Writing past the qgroup limit fails inside the guest with EDQUOT.
    fill = host.run(
        "vs-exec", "-T", "web", "--", "dd", "if=/dev/zero", "of=/root/fill", "bs=1M", "count=40",
        check=False,
    )  # fmt: skip
    assert fill.returncode != 0 and "Disk quota exceeded" in fill.stderr, fill.stderr
    host.exec("web", "rm", "/root/fill")
    # Raised hot: the same write now fits.
    host.run("vs-limit", "--name", "web", "--disk", "96")
    assert "DISK_LIMIT=96" in (host.guests_dir / "web" / "guest.conf").read_text()
    host.exec("web", "dd", "if=/dev/zero", "of=/root/fill", "bs=1M", "count=40")
    host.exec("web", "sync")
    _sync(host)
    (row,) = json.loads(host.run("vs-limit", "--name", "web", "--json").stdout)
    used, limit = (int(v) for v in row["disk"].split("/"))
    assert limit == 96 and 40 <= used < 60, row
    stats = json.loads(host.run("vs-stats", "--name", "web", "--json").stdout)
    assert 40 <= stats["disk_used_mb"] < 60 and stats["disk_limit_mb"] == 96
    # Below what the guest uses: refused, nothing changed.
    refused = host.run("vs-limit", "--name", "web", "--disk", "20", check=False)
    assert refused.returncode == 4 and "more than 20 MB" in refused.stderr, refused.stderr
    assert "DISK_LIMIT=96" in (host.guests_dir / "web" / "guest.conf").read_text()
    shown = _btrfs("qgroup", "show", "--raw", "-re", "-f", str(host.rootfs("web")))
    assert int(shown.splitlines()[-1].split()[3]) == 96 * MB
    host.run("vs-control", "--name", "web", "--stop")


def test_read_only_snapshots_keep_the_moment(btrfs_host: Host) -> None:
    host = btrfs_host
    _configure(host)
    _create(host, "web", "198.51.100.10")
    host.run("vs-control", "--name", "web", "--start")
    host.exec("web", "sh", "-c", "echo before > /root/note")
    storage = storage_for(resolve_paths(host.env), StorageKind.BTRFS)
    started = time.monotonic()
    snapshot = storage.create_snapshot("web", "backup1")
    print(f"btrfs: read-only snapshot of a running guest {time.monotonic() - started:.3f} s")
    assert snapshot.path == Path(host.env["VS_ROOT_DIR"]) / ".snapshots" / "web.backup1"
    assert "readonly" in _subvolume(snapshot.path)["Flags"]
    host.exec("web", "sh", "-c", "echo after > /root/note")
    assert (snapshot.path / "root" / "note").read_text() == "before\n"
    with pytest.raises(OSError, match="Read-only file system"):
        (snapshot.path / "root" / "note").write_text("x")
    with pytest.raises(HostError):  # the same tag twice
        storage.create_snapshot("web", "backup1")
    storage.remove_snapshot(snapshot)
    assert not snapshot.path.exists()
    assert _subvolumes(host) == ["vservers/web"]
    host.run("vs-control", "--name", "web", "--stop")


def test_a_failed_create_leaves_no_subvolume(btrfs_host: Host, tmp_path: Path) -> None:
    """A template larger than the disk limit: tar hits EDQUOT, everything is rolled back."""
    host = btrfs_host
    big = tmp_path / "big"
    subprocess.run(["cp", "-a", str(host.template), str(big)], check=True)
    (big / "blob").write_bytes(os.urandom(30 * MB))
    tarball = tmp_path / "big.tar"
    subprocess.run(["tar", "-cf", str(tarball), "-C", str(big), "."], check=True)
    _configure(host)
    failed = host.run(
        "vs-create", "--name", "web", "--interface", "198.51.100.10", "--disk", "16",
        "--template", str(tarball), check=False,
    )  # fmt: skip
    # tar's first complaint is its short write (EDQUOT came part way through a block).
    assert failed.returncode == 5 and "tar: ./blob: Wrote only" in failed.stderr, failed.stderr
    assert "rolled back: create the btrfs subvolume" in failed.stderr
    assert _subvolumes(host) == []
    assert not host.rootfs("web").exists() and not (host.guests_dir / "web").exists()


def test_btrfs_needs_btrfs_and_quotas(host: Host, btrfs_fs: Path) -> None:
    _configure(host)
    refused = host.run("vs-create", "--name", "web", "--interface", "198.51.100.10", check=False)
    assert refused.returncode == 5, refused.stderr
    assert "needs ROOT_DIR" in refused.stderr and "on a btrfs file system" in refused.stderr
    assert not host.rootfs("web").exists()
    _btrfs("quota", "disable", str(btrfs_fs))
    with pytest.raises(HostError, match=f"btrfs quota enable {btrfs_fs}"):
        check_btrfs(btrfs_fs / "vservers")
    _btrfs("quota", "enable", str(btrfs_fs))
    check_btrfs(btrfs_fs / "vservers")


def test_usage_is_the_qgroup_referenced_bytes(btrfs_host: Host) -> None:
    host = btrfs_host
    _configure(host)
    _create(host, "web", "198.51.100.10")
    (host.rootfs("web") / "root" / "data").write_bytes(os.urandom(5 * MB))
    _sync(host)
    storage = BtrfsStorage(resolve_paths(host.env))
    used = storage.used_bytes("web")
    assert used == qgroup_referenced(host.rootfs("web"))
    assert 5 * MB < used < 12 * MB
