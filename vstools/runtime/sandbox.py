"""What a guest's first process does between fork and exec: enter the guest's root with the old
root detached, build /proc, /sys, /dev and /tmp, set the hostname and loopback, join the guest's
user namespace when it has one (see vstools.namespaces), install the seccomp denylist, drop
capabilities and exec the guest's init (DESIGN §5).

Mounts are a list of operations that can describe themselves (for --dry-run and logs) before
they run. After pivot_root no host path is reachable, so every later mount target is resolved
inside the guest's own tree: a guest symlink can only point back into the guest.

After pivot_root (or, in the vs-exec helper, after joining the guest's mount namespace) the
host's Python library is gone, so nothing may be imported there: libseccomp's binding, costly
to import and needed only to start or enter a guest, is loaded by ``preload()``, which both
call before they leave the host's file tree."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import resource
import socket
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vstools.host.namespaces import become_root_of
from vstools.host.netlink import sysctl_write
from vstools.host.syscalls import (
    AT_RECURSIVE,
    CLONE_NEWCGROUP,
    MNT_DETACH,
    MOUNT_ATTR_IDMAP,
    MOUNT_ATTR_NODEV,
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    OPEN_TREE_CLOEXEC,
    OPEN_TREE_CLONE,
    PR_CAP_AMBIENT,
    PR_CAP_AMBIENT_CLEAR_ALL,
    PR_CAPBSET_DROP,
    PR_SET_DUMPABLE,
    PR_SET_NO_NEW_PRIVS,
    TIOCSCTTY,
    Cap,
    capget,
    capset,
    last_cap,
    libraries_by_soname,
    mount,
    mount_setattr,
    move_mount,
    open_tree,
    pivot_root,
    prctl,
    sethostname,
    umount2,
    unshare,
)

# Capabilities a guest's root never has (DESIGN §5, plus those that reach the host kernel or
# other tenants): DAC_READ_SEARCH is the open_by_handle_at "shocker" escape, SYSLOG reads and
# clears the host's kernel ring, BPF/PERFMON/SYS_RAWIO reach kernel memory.
DROPPED_CAPS: frozenset[Cap] = frozenset(
    {
        Cap.SYS_MODULE,
        Cap.SYS_RAWIO,
        Cap.SYS_TIME,
        Cap.NET_ADMIN,
        Cap.SYS_BOOT,
        Cap.MKNOD,
        Cap.SYS_ADMIN,
        Cap.DAC_READ_SEARCH,
        Cap.SYSLOG,
        Cap.MAC_ADMIN,
        Cap.MAC_OVERRIDE,
        Cap.AUDIT_CONTROL,
        Cap.AUDIT_READ,
        Cap.BPF,
        Cap.PERFMON,
        Cap.CHECKPOINT_RESTORE,
        Cap.SYS_PACCT,
        Cap.SYS_TTY_CONFIG,
        Cap.WAKE_ALARM,
        Cap.BLOCK_SUSPEND,
    }
)
# Dropped too when the guest's root is the host's uid 0 (no user namespace), where these act on
# the host itself, as Docker's default set drops them (docs/security.md):
# - SYS_PTRACE: would override the ptrace checks that keep a non-dumpable process (the vs-exec
#   helper before its exec, catalogue A1) out of reach;
# - LINUX_IMMUTABLE: chattr +i on files the host must be able to remove (A8);
# - SYS_NICE and SYS_RESOURCE: SCHED_FIFO/RR (directly, or by raising RLIMIT_RTPRIO) puts a task
#   outside the CFS quota on kernels without RT group scheduling, the usual production build.
# In a user namespace these only reach the guest's own namespace and are kept.
ROOT_MODE_DROPPED_CAPS: frozenset[Cap] = frozenset(
    {Cap.SYS_PTRACE, Cap.LINUX_IMMUTABLE, Cap.SYS_NICE, Cap.SYS_RESOURCE}
)


def guest_dropped_caps(*, in_user_namespace: bool) -> frozenset[Cap]:
    """The capabilities a guest's processes never hold, by mode."""
    return DROPPED_CAPS if in_user_namespace else DROPPED_CAPS | ROOT_MODE_DROPPED_CAPS


# The seccomp denylist (DESIGN §5): these fail with EPERM even for a process that somehow holds
# the capability they need.
DENIED_SYSCALLS = (
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "open_by_handle_at",
    "name_to_handle_at",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "lookup_dcookie",
    "iopl",
    "ioperm",
    "swapon",
    "swapoff",
)
# A root-mode guest must not make a user namespace: in one whose uid 0 is the host's uid 0 it
# would hold every capability over new mount and cgroup namespaces, mount cgroup hierarchies
# and write its own limits, or the host's root groups where it has no group of its own
# (catalogue A2). As Docker's default profile: clone and unshare with CLONE_NEWUSER fail with
# EPERM, and clone3, whose flags seccomp cannot read, fails with ENOSYS so that libc falls back
# to clone.
CLONE_NEWUSER_FLAG = 0x10000000
# ioctl(fd, TIOCSTI) pushes characters into a terminal's input: a guest process must never be
# able to type into a terminal it shares (catalogue S13). TIOCLINUX does the same on a VT.
TIOCSTI = 0x5412
TIOCLINUX = 0x541C

# <linux/sockios.h> and <linux/if.h>, to bring "lo" up without netlink or a host binary.
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


@dataclass(frozen=True, slots=True)
class MountOp:
    """One step of building the guest's filesystem view, after pivot_root."""

    kind: str  # mount | bind | remount-ro | node | symlink | mkdir
    target: str
    source: str | None = None
    fstype: str | None = None
    flags: int = 0
    data: str | None = None
    device: tuple[int, int] = (0, 0)
    mode: int = 0o666
    owner: int = 0  # a node's uid and gid on the host (the guest's root with a user namespace)
    optional: bool = False  # skipped when the target does not exist (kernel-dependent files)

    def describe(self) -> str:
        """The operation as the equivalent shell command, for --dry-run, logs and errors."""
        if self.kind == "mount":
            options = f" -o {self.data}" if self.data else ""
            return f"mount -t {self.fstype} {self.source} {self.target}{options}"
        if self.kind == "bind":
            return f"mount --bind {self.source} {self.target}"
        if self.kind == "remount-ro":
            return f"mount -o remount,bind,ro {self.target}"
        if self.kind == "node":
            return f"mknod -m {self.mode:o} {self.target} c {self.device[0]} {self.device[1]}"
        if self.kind == "symlink":
            return f"ln -s {self.source} {self.target}"
        return f"mkdir -p {self.target}"

    def execute(self) -> None:
        """Carry the operation out; an optional one whose target does not exist is skipped."""
        if self.optional and not os.path.lexists(self.target):
            return
        if self.kind == "mount":
            os.makedirs(self.target, exist_ok=True)
            mount(self.source, self.target, self.fstype, self.flags, self.data)
        elif self.kind == "bind":
            mount(self.source, self.target, None, MS_BIND | MS_REC)
            if self.flags:
                mount(None, self.target, None, MS_BIND | MS_REMOUNT | self.flags)
        elif self.kind == "remount-ro":
            mount(self.target, self.target, None, MS_BIND | MS_REC)
            mount(
                None,
                self.target,
                None,
                MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
            )
        elif self.kind == "node":
            os.mknod(self.target, 0o020000 | self.mode, os.makedev(*self.device))
            os.chmod(self.target, self.mode)  # mknod's mode is filtered by the umask
            if self.owner:
                os.chown(self.target, self.owner, self.owner)
        elif self.kind == "symlink":
            os.symlink(str(self.source), self.target)
        else:
            os.makedirs(self.target, mode=self.mode, exist_ok=True)


PROC_MASKED_FILES = (
    "/proc/kcore",
    "/proc/keys",
    "/proc/kallsyms",
    "/proc/timer_list",
    "/proc/sched_debug",
    "/proc/latency_stats",
    "/proc/timer_stats",
)
PROC_MASKED_DIRS = ("/proc/acpi", "/proc/scsi", "/proc/asound", "/sys/firmware")
PROC_READ_ONLY = ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs")
DEVICES = (
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
)


def build_mounts(*, tmpfs_mb: int, id_base: int = 0) -> list[MountOp]:
    """The guest's /proc, /sys, /dev and /tmp, as operations run after pivot_root. With a user
    namespace (``id_base``: the host uid of the guest's root) the guest's root owns its /dev,
    /dev/shm and /tmp, and its tty group (5) owns its terminals."""
    nosuid_nodev_noexec = MS_NOSUID | MS_NODEV | MS_NOEXEC
    owner = f",uid={id_base},gid={id_base}" if id_base else ""
    ops = [
        MountOp("mount", "/proc", "proc", "proc", nosuid_nodev_noexec),
        MountOp(
            "mount", "/dev", "tmpfs", "tmpfs", MS_NOSUID | MS_NOEXEC, f"mode=755,size=1024k{owner}"
        ),
    ]
    ops += [
        MountOp("node", f"/dev/{name}", device=(major, minor), owner=id_base)
        for name, major, minor in DEVICES
    ]
    ops += [
        MountOp(
            "mount",
            "/dev/pts",
            "devpts",
            "devpts",
            MS_NOSUID | MS_NOEXEC,
            f"newinstance,ptmxmode=0666,mode=0620,gid={id_base + 5}",
        ),
        MountOp("symlink", "/dev/ptmx", "pts/ptmx"),
        MountOp("symlink", "/dev/fd", "/proc/self/fd"),
        MountOp("symlink", "/dev/stdin", "/proc/self/fd/0"),
        MountOp("symlink", "/dev/stdout", "/proc/self/fd/1"),
        MountOp("symlink", "/dev/stderr", "/proc/self/fd/2"),
        MountOp(
            "mount",
            "/dev/shm",
            "tmpfs",
            "tmpfs",
            MS_NOSUID | MS_NODEV,
            f"mode=1777,size={tmpfs_mb}m{owner}",
        ),
    ]
    ops += [
        MountOp(
            "bind",
            path,
            "/dev/null",
            flags=MS_RDONLY | MS_NOSUID | MS_NOEXEC,  # not nodev: /dev/null must open
            optional=True,
        )
        for path in PROC_MASKED_FILES
    ]
    ops += [MountOp("remount-ro", path, optional=True) for path in PROC_READ_ONLY]
    ops += [
        MountOp("mount", "/sys", "sysfs", "sysfs", MS_RDONLY | nosuid_nodev_noexec),
        *[
            MountOp(
                "mount",
                path,
                "tmpfs",
                "tmpfs",
                MS_RDONLY | nosuid_nodev_noexec,
                "size=0,mode=0555",
                optional=True,
            )
            for path in PROC_MASKED_DIRS
        ],
        MountOp(
            "mount",
            "/tmp",
            "tmpfs",
            "tmpfs",
            MS_NOSUID | MS_NODEV,
            f"mode=1777,size={tmpfs_mb}m{owner}",
        ),
    ]
    return ops


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    """Everything the guest's first process needs; built by the supervisor from guest.conf."""

    rootfs: str
    hostname: str
    tmpfs_mb: int
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    no_new_privs: bool = False
    # With a user namespace: its descriptor (made by the supervisor, ids already mapped) and the
    # host uid of the guest's root; -1 and 0 without.
    userns_fd: int = -1
    id_base: int = 0


def enter_root(rootfs: str, userns_fd: int = -1) -> None:
    """Make the guest's rootfs the root of this (new, private) mount namespace, mounted nodev so
    a device node planted in it opens nothing (S9), with the host's root detached (S2). With a
    user namespace the rootfs is an idmapped clone: on-disk owners 0..65535 are the guest's."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    if userns_fd >= 0:
        tree = open_tree(rootfs, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE)
        try:
            try:
                mount_setattr(tree, MOUNT_ATTR_IDMAP | MOUNT_ATTR_NODEV, userns_fd=userns_fd)
            except OSError as exc:
                raise OSError(
                    exc.errno,
                    f"USERNS=yes: the filesystem of {rootfs} cannot be mounted idmapped"
                    f" ({exc.strerror}); use one that can (ext4, btrfs, xfs, tmpfs)",
                ) from None
            move_mount(tree, rootfs)
        finally:
            os.close(tree)
    else:
        mount(rootfs, rootfs, None, MS_BIND | MS_REC)
        mount(None, rootfs, None, MS_BIND | MS_REMOUNT | MS_NODEV)
    os.chdir(rootfs)
    # pivot_root(".", ".") stacks the old root on top of the new one; detaching it leaves the
    # guest's tree as "/" with nothing of the host reachable (the LXC/runc idiom).
    pivot_root(".", ".")
    umount2(".", MNT_DETACH)
    os.chdir("/")


def open_low_ports_and_ping(id_base: int) -> None:
    """For a guest in a user namespace, whose root holds no capability over its network
    namespace (the host's user namespace owns it): let its processes bind ports below 1024 and
    send ICMP echo without a raw socket, in its network namespace only (as Docker does for its
    containers). Written before pivot_root, through the host's /proc, whose net/ sysctls are
    those of the writer's network namespace; the gid range is read in the writer's (the host's)
    user namespace, hence the guest's host gids."""
    for key, value in (
        ("ip_unprivileged_port_start", "0"),
        ("ping_group_range", f"{id_base} {id_base + 65535}"),
    ):
        sysctl_write(f"net/ipv4/{key}", value)


def set_loopback_up() -> None:
    """Bring ``lo`` up in the current network namespace, by ioctl (no netlink, no host binary)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


# The sonames pyseccomp's find_library("c") and find_library("seccomp") stand for (Debian 12's,
# and every distribution's since libseccomp 2.0 and glibc 2.3).
SECCOMP_SONAMES = {"c": "libc.so.6", "seccomp": "libseccomp.so.2"}
_SECCOMP: list[Any] = []  # pyseccomp (or seccomp), once preload() has run


def preload() -> None:
    """Import what confining a process needs (pyseccomp and its libseccomp) while the host's
    files are still reachable."""
    if not _SECCOMP:
        try:
            # by soname: no `ldconfig -p` processes (pyseccomp's find_library) on each start
            with libraries_by_soname(SECCOMP_SONAMES):
                import pyseccomp as binding
        except ImportError:
            # Debian's python3-seccomp: libseccomp's own binding, the API pyseccomp copies.
            import seccomp as binding
        _SECCOMP.append(binding)


def install_seccomp(*, no_new_privs: bool, deny_user_namespaces: bool) -> None:
    """Load the denylist (and, for a root-mode guest, the user-namespace rules). Without
    no_new_privs the kernel wants CAP_SYS_ADMIN for this, so it runs before the capabilities
    are dropped; the filter is inherited by everything after."""
    preload()
    pyseccomp = _SECCOMP[0]
    rules = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    # Apply the same rules to 32-bit x86 binaries; otherwise libseccomp kills any process of a
    # foreign architecture, which would break an i386 guest rather than protect it.
    if os.uname().machine == "x86_64":
        rules.add_arch(pyseccomp.Arch.X86)
    rules.set_attr(pyseccomp.Attr.CTL_NNP, 1 if no_new_privs else 0)
    for name in DENIED_SYSCALLS:
        try:
            rules.add_rule(pyseccomp.ERRNO(errno.EPERM), name)
        except (OSError, ValueError, RuntimeError):
            continue  # a syscall this architecture does not have (iopl on aarch64)
    for request in (TIOCSTI, TIOCLINUX):
        rules.add_rule(
            pyseccomp.ERRNO(errno.EPERM),
            "ioctl",
            pyseccomp.Arg(1, pyseccomp.MASKED_EQ, 0xFFFFFFFF, request),
        )
    if deny_user_namespaces:
        flag = CLONE_NEWUSER_FLAG
        for name in ("unshare", "clone"):  # the flags are the first argument of both
            user = pyseccomp.Arg(0, pyseccomp.MASKED_EQ, flag, flag)
            rules.add_rule(pyseccomp.ERRNO(errno.EPERM), name, user)
        # A libseccomp too old to know clone3 is older than the kernels and libcs that use it.
        with contextlib.suppress(OSError, ValueError, RuntimeError):
            rules.add_rule(pyseccomp.ERRNO(errno.ENOSYS), "clone3")
    rules.load()


def drop_capabilities(dropped: frozenset[Cap]) -> None:
    """Remove ``dropped`` from the bounding set (so no exec can regain them) and from the
    effective and permitted sets; clear inheritable and ambient sets. What the host's root
    itself lacks stays lacking: the kept set is what we hold minus ``dropped``."""
    _, permitted, _ = capget()
    for cap in range(last_cap() + 1):
        if cap in dropped:
            prctl(PR_CAPBSET_DROP, cap)
    keep = permitted & ~sum(1 << cap for cap in dropped)
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    capset(keep, keep, 0)


def make_console(channel: socket.socket, owner: int = 0) -> int:
    """Open a pty of the guest's own devpts, hand its master to the supervisor over ``channel``
    and bind its slave onto /dev/console; return the slave, the init's terminal. (A pty of the
    host's devpts cannot be bound here: its mount is not in this namespace.)"""
    master, slave = os.openpty()
    if owner:
        os.fchown(slave, owner, owner + 5)  # the guest's root and its tty group
    socket.send_fds(channel, [b"console"], [master])
    os.close(master)
    channel.close()
    with open("/dev/console", "a"):
        pass  # a mount point for the bind
    mount(os.ttyname(slave), "/dev/console", None, MS_BIND)
    return slave


def set_console(console_fd: int) -> None:
    """Make the console the controlling terminal and the stdio of the guest's init."""
    os.setsid()
    fcntl.ioctl(console_fd, TIOCSCTTY)
    for target in (0, 1, 2):
        os.dup2(console_fd, target)
        os.set_inheritable(target, True)  # dup2 onto itself keeps close-on-exec


def confine(*, in_user_namespace: bool, no_new_privs: bool = False, dumpable: bool = True) -> None:
    """Give this process the guest's privileges and no more: no real-time priority, the
    seccomp filter, no_new_privs if asked, the guest's capability set; not ``dumpable`` for a
    host helper that must stay out of reach until its exec (then the kernel resets it).
    Called by the guest's init and by the vs-exec helper, the same way for both."""
    resource.setrlimit(resource.RLIMIT_RTPRIO, (0, 0))
    install_seccomp(no_new_privs=no_new_privs, deny_user_namespaces=not in_user_namespace)
    if no_new_privs:
        prctl(PR_SET_NO_NEW_PRIVS, 1)
    drop_capabilities(guest_dropped_caps(in_user_namespace=in_user_namespace))
    if not dumpable:
        prctl(PR_SET_DUMPABLE, 0)


def close_fds(keep: Sequence[int]) -> None:
    """Close every descriptor but ``keep`` so no host file reaches the guest (S3)."""
    keep_sorted = sorted(set(keep))
    low = 0
    for fd in keep_sorted:
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 20)


def setup_and_exec(spec: SandboxSpec, *, console: socket.socket, report_fd: int) -> None:
    """In the guest's first process (PID 1 of its new PID namespace, already in the guest's
    cgroup): build the guest and exec its init. Never returns; errors reach the caller as
    exceptions before exec, and report_fd (close-on-exec) tells the supervisor exec happened."""
    preload()
    unshare(CLONE_NEWCGROUP)  # the guest sees its own cgroup as the root of the hierarchy
    ops = build_mounts(tmpfs_mb=spec.tmpfs_mb, id_base=spec.id_base)
    if spec.id_base:
        open_low_ports_and_ping(spec.id_base)
    enter_root(spec.rootfs, spec.userns_fd)
    for op in ops:
        try:
            op.execute()
        except OSError as exc:
            raise OSError(exc.errno, f"{op.describe()}: {exc.strerror}") from None
    console_fd = make_console(console, spec.id_base)
    sethostname(spec.hostname)
    set_loopback_up()
    set_console(console_fd)
    if spec.userns_fd >= 0:
        become_root_of(spec.userns_fd)  # last: what the host owns is set up by now
    confine(in_user_namespace=spec.userns_fd >= 0, no_new_privs=spec.no_new_privs)
    close_fds([0, 1, 2, report_fd])
    os.execve(spec.argv[0], list(spec.argv), dict(spec.env))  # noqa: S606 - the guest's init
