"""Building a minimal busybox guest root filesystem from the host's statically linked busybox
(Debian's busybox-static): the tests' and the demo's template, so nothing is downloaded."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from vstools.errors import NotFoundError, StateError
from vstools.host.run import run

INITTAB = """\
# busybox init: nothing to respawn; the guest idles until it is told to stop.
# (The hostname is set by the host before init runs: the guest cannot set it itself.)
::shutdown:/bin/sync
"""
PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"  # noqa: S105 - an /etc/passwd, no password in it
GROUP = "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n"
DIRS = (
    "bin",
    "sbin",
    "etc",
    "proc",
    "sys",
    "dev",
    "tmp",
    "root",
    "run",
    "var/log",
    "usr/bin",
    "usr/sbin",
)


def find_busybox() -> Path:
    """The host's busybox, in /bin or /usr/bin; NotFoundError when there is none."""
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        path = Path(candidate)
        if path.is_file():
            return path
    raise NotFoundError("busybox not found: install Debian's busybox-static")


def build_busybox_rootfs(target: Path, *, hostname: str = "guest") -> Path:
    """Lay out a bootable busybox root filesystem in ``target`` (created, must not exist)."""
    busybox = find_busybox()
    target.mkdir(parents=True)
    for directory in DIRS:
        (target / directory).mkdir(parents=True, exist_ok=True)
    os.chmod(target / "tmp", 0o1777)  # noqa: S103 - /tmp is world-writable and sticky
    shutil.copy2(busybox, target / "bin" / "busybox")
    # Every applet the binary knows, as a relative symlink, the way `busybox --install -s`
    # would lay them out (not run here: it would execute a binary with the host's privileges).
    applets = _applets(busybox)
    for applet in applets:
        link = target / "bin" / applet
        if applet in ("init", "halt", "poweroff", "reboot"):
            link = target / "sbin" / applet
        if not link.exists():
            link.symlink_to("../bin/busybox" if link.parent.name == "sbin" else "busybox")
    (target / "etc" / "inittab").write_text(INITTAB)
    (target / "etc" / "passwd").write_text(PASSWD)
    (target / "etc" / "group").write_text(GROUP)
    (target / "etc" / "hostname").write_text(hostname + "\n")
    return target


def _applets(busybox: Path) -> list[str]:
    # The applet list is in the binary after the "[\0[[\0" marker, NUL-separated.
    data = busybox.read_bytes()
    start = data.find(b"[\0[[\0")
    if start < 0:
        return ["sh", "init", "ls", "ps", "cat", "echo", "sleep", "mount", "hostname", "sync"]
    names = []
    for raw in data[start : start + 20000].split(b"\0"):
        if not raw:
            break
        names.append(raw.decode())
    return names


def write_busybox_template(archive: Path) -> Path:
    """A busybox template archive (tar.gz) for ``vs-create --template``."""
    import tempfile

    if archive.exists():
        raise StateError(f"{archive} already exists")
    with tempfile.TemporaryDirectory(prefix="vst-template-") as scratch:
        rootfs = build_busybox_rootfs(Path(scratch) / "rootfs")
        run(["tar", "--numeric-owner", "-czf", str(archive), "-C", str(rootfs), "."])
    return archive
