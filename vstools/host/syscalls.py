"""Thin ctypes wrappers for the Linux system calls the guest runtime needs and Python 3.11 lacks
(unshare, setns, mount, umount2, pivot_root, sethostname, capget/capset, prctl, and the new
mount API's open_tree, mount_setattr and move_mount for idmapped mounts). Each raises
OSError with the errno and the arguments, as mkosi's sandbox does; nothing here decides policy.

Constants come from the kernel's uapi headers, named as there: <linux/sched.h> (CLONE_*),
<linux/mount.h> (MS_*, MNT_*), <linux/capability.h> (CAP_*), <linux/prctl.h> (PR_*)."""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from enum import IntEnum

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

# <linux/sched.h>
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# <linux/mount.h>
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_SILENT = 32768
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MNT_DETACH = 2
# The new mount API (<linux/mount.h>, <linux/fcntl.h>): an idmapped clone of a tree.
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_IDMAP = 0x00100000

# <linux/prctl.h>
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4  # 0: /proc/PID/* root-owned, ptrace and pidfd_getfd need CAP_SYS_PTRACE
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

# <asm-generic/ioctls.h>: terminals.
TIOCSCTTY = 0x540E  # make this terminal the controlling terminal of the session
TIOCSPTLCK = 0x40045431  # (un)lock a pty's slave
TIOCGPTPEER = 0x5441  # open the slave of a pty master without a path lookup (Linux 4.13)

# System call numbers without a libc wrapper in every libc we run on. The mount API's calls were
# added after the tables were unified, so they have one number on every architecture.
_NEW_MOUNT_API = {"open_tree": 428, "move_mount": 429, "mount_setattr": 442}
_SYSCALLS = {
    "x86_64": {"pivot_root": 155, "capget": 125, "capset": 126, **_NEW_MOUNT_API},
    "aarch64": {"pivot_root": 41, "capget": 90, "capset": 91, **_NEW_MOUNT_API},
}


class Cap(IntEnum):
    """Capability numbers of <linux/capability.h>."""

    CHOWN = 0
    DAC_OVERRIDE = 1
    DAC_READ_SEARCH = 2
    FOWNER = 3
    FSETID = 4
    KILL = 5
    SETGID = 6
    SETUID = 7
    SETPCAP = 8
    LINUX_IMMUTABLE = 9
    NET_BIND_SERVICE = 10
    NET_BROADCAST = 11
    NET_ADMIN = 12
    NET_RAW = 13
    IPC_LOCK = 14
    IPC_OWNER = 15
    SYS_MODULE = 16
    SYS_RAWIO = 17
    SYS_CHROOT = 18
    SYS_PTRACE = 19
    SYS_PACCT = 20
    SYS_ADMIN = 21
    SYS_BOOT = 22
    SYS_NICE = 23
    SYS_RESOURCE = 24
    SYS_TIME = 25
    SYS_TTY_CONFIG = 26
    MKNOD = 27
    LEASE = 28
    AUDIT_WRITE = 29
    AUDIT_CONTROL = 30
    SETFCAP = 31
    MAC_OVERRIDE = 32
    MAC_ADMIN = 33
    SYSLOG = 34
    WAKE_ALARM = 35
    BLOCK_SUSPEND = 36
    AUDIT_READ = 37
    PERFMON = 38
    BPF = 39
    CHECKPOINT_RESTORE = 40


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _syscall_number(name: str) -> int:
    machine = platform.machine()
    try:
        return _SYSCALLS[machine][name]
    except KeyError:
        raise OSError(38, f"{name}: no system call number known for {machine}") from None


RENAME_EXCHANGE = 2  # linux/fs.h


def rename_exchange(first: str | os.PathLike[str], second: str | os.PathLike[str]) -> None:
    """renameat2(2) with RENAME_EXCHANGE: swap two paths in one step (Linux 3.15; ext4, xfs,
    btrfs, tmpfs). OSError, errno EINVAL where the file system cannot."""
    _check(
        _libc.renameat2(
            ctypes.c_int(-100),  # AT_FDCWD
            os.fsencode(first),
            ctypes.c_int(-100),
            os.fsencode(second),
            ctypes.c_uint(RENAME_EXCHANGE),
        ),
        f"renameat2({first}, {second}, RENAME_EXCHANGE)",
    )


def unshare(flags: int) -> None:
    """unshare(2): move the caller into new namespaces (``flags``: CLONE_NEW*)."""
    _check(_libc.unshare(ctypes.c_int(flags)), f"unshare(0x{flags:x})")


def setns(fd: int, nstype: int = 0) -> None:
    """setns(2): join the namespace behind descriptor ``fd`` (``nstype`` 0: of any type)."""
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), f"setns(fd {fd})")


def mount(
    source: str | None,
    target: str,
    fstype: str | None = None,
    flags: int = 0,
    data: str | None = None,
) -> None:
    """mount(2); a None ``source``, ``fstype`` or ``data`` is passed as NULL."""

    def arg(text: str | None) -> bytes | None:
        """The text as bytes for C; None stays NULL."""
        return None if text is None else os.fsencode(text)

    _check(
        _libc.mount(arg(source), arg(target), arg(fstype), ctypes.c_ulong(flags), arg(data)),
        f"mount({source!r}, {target!r}, {fstype!r}, 0x{flags:x}, {data!r})",
    )


def umount2(target: str, flags: int = 0) -> None:
    """umount2(2): unmount ``target`` (``flags``: MNT_DETACH for a lazy unmount)."""
    _check(_libc.umount2(os.fsencode(target), ctypes.c_int(flags)), f"umount2({target!r})")


def pivot_root(new_root: str, put_old: str) -> None:
    """pivot_root(2): make ``new_root`` the root and move the old root to ``put_old``."""
    number = _syscall_number("pivot_root")
    _check(
        _libc.syscall(number, os.fsencode(new_root), os.fsencode(put_old)),
        f"pivot_root({new_root!r}, {put_old!r})",
    )


class _MountAttr(ctypes.Structure):
    """struct mount_attr of <linux/mount.h> (MOUNT_ATTR_SIZE_VER0)."""

    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def open_tree(path: str, flags: int, dirfd: int = -100) -> int:
    """A descriptor of ``path``'s mount (with OPEN_TREE_CLONE: a detached copy of it)."""
    number = _syscall_number("open_tree")
    return _check(
        _libc.syscall(number, ctypes.c_int(dirfd), os.fsencode(path), ctypes.c_uint(flags)),
        f"open_tree({path!r}, 0x{flags:x})",
    )


def mount_setattr(fd: int, attr_set: int, *, userns_fd: int = 0, recursive: bool = True) -> None:
    """Set ``attr_set`` (MOUNT_ATTR_*) on the mount behind ``fd``; MOUNT_ATTR_IDMAP maps its
    owners through the user namespace ``userns_fd``."""
    attr = _MountAttr(attr_set, 0, 0, userns_fd)
    flags = AT_EMPTY_PATH | (AT_RECURSIVE if recursive else 0)
    _check(
        _libc.syscall(
            _syscall_number("mount_setattr"),
            ctypes.c_int(fd),
            b"",
            ctypes.c_uint(flags),
            ctypes.byref(attr),
            ctypes.c_size_t(ctypes.sizeof(attr)),
        ),
        f"mount_setattr(fd {fd}, 0x{attr_set:x})",
    )


def move_mount(fd: int, target: str) -> None:
    """Attach the detached mount behind ``fd`` at ``target``."""
    _check(
        _libc.syscall(
            _syscall_number("move_mount"),
            ctypes.c_int(fd),
            b"",
            ctypes.c_int(-100),  # AT_FDCWD
            os.fsencode(target),
            ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH),
        ),
        f"move_mount(fd {fd}, {target!r})",
    )


def sethostname(name: str) -> None:
    """sethostname(2): the host name of the caller's UTS namespace."""
    data = name.encode()
    _check(_libc.sethostname(data, ctypes.c_size_t(len(data))), f"sethostname({name!r})")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """prctl(2) with ``option`` (PR_*) and its arguments; returns the call's result."""
    return _check(
        _libc.prctl(
            ctypes.c_int(option),
            ctypes.c_ulong(arg2),
            ctypes.c_ulong(arg3),
            ctypes.c_ulong(arg4),
            ctypes.c_ulong(arg5),
        ),
        f"prctl({option})",
    )


# <linux/capability.h>: version 3 headers carry two 32-bit words per set.
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def capget() -> tuple[int, int, int]:
    """The calling thread's (effective, permitted, inheritable) capability masks."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.syscall(_syscall_number("capget"), ctypes.byref(header), data), "capget")
    effective, permitted, inheritable = (
        getattr(data[0], name) | (getattr(data[1], name) << 32)
        for name in ("effective", "permitted", "inheritable")
    )
    return effective, permitted, inheritable


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """Set the calling thread's effective, permitted and inheritable capability masks."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for index in (0, 1):
        shift = 32 * index
        data[index].effective = (effective >> shift) & 0xFFFFFFFF
        data[index].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[index].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(_libc.syscall(_syscall_number("capset"), ctypes.byref(header), data), "capset")


def last_cap() -> int:
    """The highest capability number the running kernel knows (kernel/cap_last_cap)."""
    with open("/proc/sys/kernel/cap_last_cap") as handle:
        return int(handle.read())


@contextmanager
def libraries_by_soname(sonames: Mapping[str, str]) -> Iterator[None]:
    """While importing a binding that looks its C library up with ``ctypes.util.find_library``
    (pyseccomp does, for libc and libseccomp): answer those names with their soname when the
    dynamic loader opens it. find_library otherwise runs ``ldconfig -p`` once per name, two
    processes (about 10 ms each) on every guest start; other names still go to find_library."""
    import ctypes.util

    original = ctypes.util.find_library

    def find_library(name: str) -> str | None:
        """The soname of ``name`` when the loader opens it, else what find_library says."""
        soname = sonames.get(name)
        if soname is not None:
            try:
                ctypes.CDLL(soname)  # the loader's own search: the soname the binding then opens
            except OSError:
                return original(name)
            return soname
        return original(name)

    ctypes.util.find_library = find_library
    try:
        yield
    finally:
        ctypes.util.find_library = original
