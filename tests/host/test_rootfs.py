"""vstools.rootfs against the real kernel: catalogue rows H1/H2 (a guest symlink never makes the
host read or write outside the rootfs), plus FIFOs, device nodes, size limits and magic links.

Every "host" file here lives in tmp_path outside the guest root, never in the real /etc; each trap
is first shown to be armed (a naive open would land outside) so a pass means something."""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from vstools.host import rootfs
from vstools.host.rootfs import GuestRoot, probe_openat2

_NO_OPENAT2 = probe_openat2()
pytestmark = pytest.mark.skipif(_NO_OPENAT2 is not None, reason=_NO_OPENAT2 or "")

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mknod, chown)")

SECRET = b"root:$6$host-secret:19000:0:99999:7:::\n"
OUTSIDE_X = b"nameserver 6.6.6.6  # OUTSIDE\n"
INSIDE_X = b"nameserver 10.0.0.1  # inside\n"


@dataclass
class Layout:
    tmp: Path  # everything under tmp except `root` plays the host
    root: Path  # tmp/lib/vservers/web1, so "../../../../x" from root/etc lands exactly on tmp/x
    guest: GuestRoot

    def snapshot_outside(self) -> dict[str, tuple[object, ...]]:
        """Every host entry under tmp (type, mode, owner, content or link target, mtime)."""
        snap: dict[str, tuple[object, ...]] = {}
        for dirpath, dirnames, filenames in os.walk(self.tmp):
            dirnames[:] = [d for d in dirnames if Path(dirpath, d) != self.root]
            for name in dirnames + filenames + ["."]:
                path = Path(dirpath, name)
                st = path.lstat()
                if stat.S_ISLNK(st.st_mode):
                    body: object = os.readlink(path)
                elif stat.S_ISREG(st.st_mode):
                    body = path.read_bytes()
                else:
                    body = None
                key = str(path.relative_to(self.tmp))
                snap[key] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, body)
        return snap

    def temp_files(self) -> list[Path]:
        return [p for p in self.root.rglob(f"{rootfs.TMP_PREFIX}*") if p.name.endswith(".tmp")]


@pytest.fixture
def layout(tmp_path: Path) -> Iterator[Layout]:
    root = tmp_path / "lib" / "vservers" / "web1"
    (root / "etc").mkdir(parents=True)
    # Decoys at every level a naive "..", "../.." or "../../.." from root/etc would reach.
    for host_dir in (tmp_path, tmp_path / "lib", tmp_path / "lib" / "vservers"):
        (host_dir / "x").write_bytes(OUTSIDE_X)
        (host_dir / "shadow").write_bytes(SECRET)
    (root / "x").write_bytes(INSIDE_X)
    (root / "etc" / "hostname").write_bytes(b"old\n")
    (tmp_path / "hostetc").mkdir()
    (tmp_path / "hostetc" / "hostname").write_bytes(b"host\n")
    with GuestRoot(root) as guest:
        yield Layout(tmp_path, root, guest)


def _naive_target(link: Path) -> Path:
    """Where a host process that just follows the link would end up."""
    return link.resolve()


def _in_thread(fn: Callable[[], object], timeout_s: float = 2.0) -> object:
    """Run fn in a daemon thread; fail the test if it is still blocked after timeout_s."""
    result: list[object] = []

    def run() -> None:
        try:
            result.append(fn())
        except Exception as exc:
            result.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout_s)
    assert not thread.is_alive(), f"blocked for more than {timeout_s}s"
    return result[0]


# -- H1: writing through a planted symlink --------------------------------------------------------


@pytest.mark.parametrize("kind", ["absolute", "relative"])
def test_H1_write_replaces_symlink_to_host_file(layout: Layout, kind: str) -> None:
    shadow = layout.tmp / "shadow"
    link = layout.root / "etc" / "hostname"
    link.unlink()
    link.symlink_to(str(shadow) if kind == "absolute" else "../../../../shadow")
    assert _naive_target(link) == shadow  # the trap is armed
    before = layout.snapshot_outside()

    layout.guest.write_text("etc/hostname", "web1\n")

    assert layout.snapshot_outside() == before
    assert shadow.read_bytes() == SECRET
    assert stat.S_ISREG(link.lstat().st_mode)
    assert link.read_bytes() == b"web1\n"
    assert layout.temp_files() == []


# -- H2: reading and writing through resolv.conf symlinks ----------------------------------------


@pytest.mark.parametrize("target", ["../../../../x", "../../x", "/x", "/../../x"])
def test_H2_read_through_symlink_stays_inside(layout: Layout, target: str) -> None:
    link = layout.root / "etc" / "resolv.conf"
    link.symlink_to(target)
    if not target.startswith("/"):
        assert _naive_target(link).read_bytes() == OUTSIDE_X  # the trap is armed

    assert layout.guest.read_bytes("etc/resolv.conf") == INSIDE_X
    assert layout.guest.read_bytes("/etc/resolv.conf") == INSIDE_X


def test_H2_absolute_symlink_to_host_path_is_root_relative(layout: Layout) -> None:
    link = layout.root / "etc" / "resolv.conf"
    link.symlink_to(layout.tmp / "x")
    assert _naive_target(link).read_bytes() == OUTSIDE_X

    with pytest.raises(FileNotFoundError):
        layout.guest.read_bytes("etc/resolv.conf")
    # The same absolute path, recreated inside the root, is what the link means to the guest.
    mirrored = layout.root / str(layout.tmp / "x").lstrip("/")
    mirrored.parent.mkdir(parents=True)
    mirrored.write_bytes(INSIDE_X)
    assert layout.guest.read_bytes("etc/resolv.conf") == INSIDE_X


@pytest.mark.parametrize("target", ["../../../../x", "../../x", "/x", "<host>/x"])
def test_H2_write_through_symlink_changes_nothing_outside(layout: Layout, target: str) -> None:
    link = layout.root / "etc" / "resolv.conf"
    link.symlink_to(target.replace("<host>", str(layout.tmp)))
    before = layout.snapshot_outside()

    layout.guest.write_bytes("etc/resolv.conf", b"nameserver 10.0.0.53\n")

    assert layout.snapshot_outside() == before
    assert stat.S_ISREG(link.lstat().st_mode)
    assert link.read_bytes() == b"nameserver 10.0.0.53\n"
    assert (layout.root / "x").read_bytes() == INSIDE_X


def test_symlinked_parent_to_absolute_host_dir(layout: Layout) -> None:
    hostetc = layout.tmp / "hostetc"
    (layout.root / "etc" / "hostname").unlink()
    (layout.root / "etc").rmdir()
    (layout.root / "etc").symlink_to(hostetc)
    assert _naive_target(layout.root / "etc" / "hostname") == hostetc / "hostname"
    before = layout.snapshot_outside()

    # Inside the root, "/<tmp>/hostetc" does not exist: the write must fail, not go to the host.
    with pytest.raises(FileNotFoundError):
        layout.guest.write_text("etc/hostname", "web1\n")
    assert layout.snapshot_outside() == before

    mirrored = layout.root / str(hostetc).lstrip("/")
    mirrored.mkdir(parents=True)
    layout.guest.write_text("etc/hostname", "web1\n")
    assert (mirrored / "hostname").read_bytes() == b"web1\n"
    assert layout.snapshot_outside() == before
    assert (hostetc / "hostname").read_bytes() == b"host\n"


def test_symlinked_parent_with_dotdot_is_clamped(layout: Layout) -> None:
    (layout.root / "etc" / "hostname").unlink()
    (layout.root / "etc").rmdir()
    (layout.root / "etc").symlink_to("../../../hostetc")
    assert _naive_target(layout.root / "etc") == layout.tmp / "hostetc"
    before = layout.snapshot_outside()

    with pytest.raises(FileNotFoundError):
        layout.guest.write_text("etc/hostname", "web1\n")
    (layout.root / "hostetc").mkdir()
    layout.guest.write_text("etc/hostname", "web1\n")

    assert (layout.root / "hostetc" / "hostname").read_bytes() == b"web1\n"
    assert layout.snapshot_outside() == before


@pytest.mark.parametrize("path", ["../../etc/passwd", "/../../../etc/passwd", "etc/../../passwd"])
def test_dotdot_stops_at_root(layout: Layout, path: str) -> None:
    for host_dir in (layout.tmp / "lib" / "etc", layout.tmp / "lib" / "vservers" / "etc"):
        host_dir.mkdir()
        (host_dir / "passwd").write_bytes(b"host passwd\n")
    (layout.root / "etc" / "passwd").write_bytes(b"guest passwd\n")
    (layout.root / "passwd").write_bytes(b"guest passwd\n")

    assert layout.guest.read_bytes(path) == b"guest passwd\n"


# -- things that are not regular files ------------------------------------------------------------


def test_read_fifo_fails_fast(layout: Layout) -> None:
    os.mkfifo(layout.root / "etc" / "fifo")
    (layout.root / "etc" / "link").symlink_to("fifo")

    for path in ("etc/fifo", "etc/link"):
        outcome = _in_thread(functools.partial(layout.guest.read_bytes, path))
        assert isinstance(outcome, OSError)
        assert outcome.errno == errno.EINVAL


def test_write_over_fifo_replaces_it_without_blocking(layout: Layout) -> None:
    fifo = layout.root / "etc" / "fifo"
    os.mkfifo(fifo)

    assert _in_thread(lambda: layout.guest.write_bytes("etc/fifo", b"data")) is None
    assert stat.S_ISREG(fifo.lstat().st_mode)
    assert fifo.read_bytes() == b"data"


@needs_root
@pytest.mark.privileged
def test_read_device_node_refused(layout: Layout) -> None:
    # /dev/null and /dev/zero: harmless to open, but the point is that they never are.
    os.mknod(layout.root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(layout.root / "zero", stat.S_IFCHR | 0o666, os.makedev(1, 5))
    (layout.root / "etc" / "resolv.conf").symlink_to("/zero")

    for path in ("null", "zero", "etc/resolv.conf"):
        outcome = _in_thread(functools.partial(layout.guest.read_bytes, path))
        assert isinstance(outcome, OSError)
        assert outcome.errno == errno.EINVAL
    with pytest.raises(OSError, match="not a regular file"):
        layout.guest.read_bytes("etc")


def test_read_size_limit(layout: Layout) -> None:
    (layout.root / "small").write_bytes(b"a" * 100)
    with (layout.root / "huge").open("wb") as huge:
        huge.truncate(1 << 30)  # sparse: 1 GiB that costs nothing

    assert layout.guest.read_bytes("small", max_bytes=100) == b"a" * 100
    with pytest.raises(OSError) as small:
        layout.guest.read_bytes("small", max_bytes=99)
    assert small.value.errno == errno.EFBIG
    with pytest.raises(OSError) as huge_err:
        layout.guest.read_bytes("huge")
    assert huge_err.value.errno == errno.EFBIG


# -- magic links ----------------------------------------------------------------------------------


def test_guest_symlink_to_proc_self_root_stays_inside(layout: Layout) -> None:
    link = layout.root / "escape"
    link.symlink_to("/proc/self/root")
    assert (link / "etc").is_dir()  # naively followed, this is the host's /

    with pytest.raises(FileNotFoundError):
        layout.guest.read_bytes("escape/etc/hostname")
    # In the guest's view /proc/self/root is just a path under its root.
    inside = layout.root / "proc" / "self" / "root" / "etc"
    inside.mkdir(parents=True)
    (inside / "hostname").write_bytes(b"inside\n")
    assert layout.guest.read_bytes("escape/etc/hostname") == b"inside\n"


def test_magic_links_are_refused() -> None:
    # A root whose entries are real magic links (as /proc inside a rootfs would be if procfs were
    # mounted there in the host's namespace): traversing one must fail with ELOOP.
    with GuestRoot(f"/proc/{os.getpid()}") as proc:
        assert proc.read_bytes("status").startswith(b"Name:")
        for path in ("root/etc/hostname", "cwd/.", "fd/0"):
            with pytest.raises(OSError) as exc:
                proc.read_bytes(path)
            assert exc.value.errno == errno.ELOOP, path


# -- makedirs -------------------------------------------------------------------------------------


def test_makedirs_through_symlink_chain_stays_inside(layout: Layout) -> None:
    (layout.tmp / "b").mkdir()  # decoy where the relative link naively points
    (layout.root / "a").symlink_to("../../../b")
    (layout.root / "b").symlink_to("/c")
    (layout.root / "c").mkdir()
    assert _naive_target(layout.root / "a") == layout.tmp / "b"
    before = layout.snapshot_outside()

    layout.guest.makedirs("a/new/deeper", mode=0o751)

    created = layout.root / "c" / "new" / "deeper"
    assert created.is_dir()
    assert stat.S_IMODE(created.stat().st_mode) == 0o751  # exact, whatever the umask
    assert layout.snapshot_outside() == before
    layout.guest.makedirs("a/new/deeper")  # existing: a no-op
    assert layout.guest.exists("c/new/deeper")


def test_makedirs_refuses_non_directories(layout: Layout) -> None:
    (layout.root / "dangling").symlink_to("/nowhere")

    with pytest.raises(NotADirectoryError):
        layout.guest.makedirs("etc/hostname/sub")
    with pytest.raises(NotADirectoryError):
        layout.guest.makedirs("dangling/sub")
    assert not (layout.root / "nowhere").exists()
    assert (layout.root / "etc" / "hostname").read_bytes() == b"old\n"


# -- atomicity and the write itself ---------------------------------------------------------------


def test_failed_write_over_directory_leaves_no_temp_file(layout: Layout) -> None:
    (layout.root / "etc" / "sub").mkdir()

    with pytest.raises(IsADirectoryError):
        layout.guest.write_bytes("etc/sub", b"data")
    assert (layout.root / "etc" / "sub").is_dir()
    assert layout.temp_files() == []


def test_failed_write_keeps_old_content(layout: Layout, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "simulated I/O error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError) as exc:
        layout.guest.write_bytes("etc/hostname", b"new\n")

    assert exc.value.errno == errno.EIO
    assert (layout.root / "etc" / "hostname").read_bytes() == b"old\n"
    assert layout.temp_files() == []


@needs_root
@pytest.mark.privileged
def test_write_sets_mode_and_owner(layout: Layout) -> None:
    old_umask = os.umask(0o077)
    try:
        layout.guest.write_bytes("etc/app.conf", b"x=1\n", mode=0o640, uid=1234, gid=4321)
    finally:
        os.umask(old_umask)

    st = (layout.root / "etc" / "app.conf").lstat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 1234, 4321)


@pytest.mark.parametrize("path", ["", "/", "etc/", "etc/.", "etc/..", "."])
def test_write_needs_a_plain_final_name(layout: Layout, path: str) -> None:
    before = sorted(layout.root.rglob("*"))
    with pytest.raises(OSError) as exc:
        layout.guest.write_bytes(path, b"data")
    assert exc.value.errno == errno.EINVAL
    assert sorted(layout.root.rglob("*")) == before


# -- unlink, exists, text, errors -----------------------------------------------------------------


def test_unlink_removes_the_symlink_not_its_target(layout: Layout) -> None:
    link = layout.root / "etc" / "hostname"
    link.unlink()
    link.symlink_to(layout.tmp / "shadow")

    layout.guest.unlink("etc/hostname")

    assert not link.is_symlink()
    assert (layout.tmp / "shadow").read_bytes() == SECRET
    with pytest.raises(FileNotFoundError):
        layout.guest.unlink("etc/hostname")
    layout.guest.unlink("etc/hostname", missing_ok=True)
    layout.guest.unlink("nodir/hostname", missing_ok=True)


def test_exists(layout: Layout) -> None:
    (layout.root / "dangling").symlink_to("/nowhere")
    (layout.root / "up").symlink_to("../../../x")

    assert layout.guest.exists("etc/hostname")
    assert layout.guest.exists("/etc")
    assert layout.guest.exists("up")  # resolves to the guest's own /x
    assert not layout.guest.exists("dangling")
    assert not layout.guest.exists("etc/missing")
    assert not layout.guest.exists("etc/hostname/below")


def test_read_text_replaces_invalid_utf8(layout: Layout) -> None:
    (layout.root / "etc" / "motd").write_bytes(b"caf\xc3\xa9 \xff\n")
    assert layout.guest.read_text("etc/motd") == "café \ufffd\n"


def test_errors_name_the_guest_path(layout: Layout) -> None:
    with pytest.raises(FileNotFoundError) as exc:
        layout.guest.read_bytes("/etc/missing")
    assert exc.value.filename == f"{layout.root}/etc/missing"


def test_nul_in_path_refused(layout: Layout) -> None:
    # Without the check, ctypes would pass "etc/hostname" and ignore the rest.
    with pytest.raises(ValueError, match="null byte"):
        layout.guest.read_bytes("etc/hostname\0/../../x")


def test_root_itself_must_not_be_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("real")
    with pytest.raises(NotADirectoryError):
        GuestRoot(tmp_path / "link")


def test_closed_root_refuses(tmp_path: Path) -> None:
    guest = GuestRoot(tmp_path)
    guest.close()
    guest.close()
    with pytest.raises(ValueError, match="closed"):
        guest.exists("x")


# -- the syscall wrapper --------------------------------------------------------------------------


def _fake_syscall(errnos: list[int]) -> Callable[..., int]:
    """A syscall() that fails with each errno in turn, then does the real call."""
    real = rootfs._syscall()

    def fake(*args: object) -> int:
        if errnos:
            ctypes.set_errno(errnos.pop(0))
            return -1
        return real(*args)

    return fake


def test_enosys_names_the_kernel_requirement(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_syscall([errno.ENOSYS])
    monkeypatch.setattr(rootfs, "_syscall", lambda: fake)
    reason = probe_openat2()
    assert reason is not None
    assert "Linux >= 5.6" in reason


def test_eagain_is_retried(layout: Layout, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_syscall([errno.EAGAIN, errno.EINTR, errno.EAGAIN])
    monkeypatch.setattr(rootfs, "_syscall", lambda: fake)
    assert layout.guest.read_bytes("x") == INSIDE_X
