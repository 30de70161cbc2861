"""User namespaces for guests whose root must not be the host's root, even by uid (DESIGN §5:
"user namespace optional, context-number based id map").

The supervisor makes the guest's user namespace before the guest exists: a short-lived child
unshares it, the supervisor (host root) writes its uid and gid maps, keeps a descriptor of it and
lets the child go. With that descriptor the guest's first process

- mounts its rootfs as an *idmapped* clone: files owned by uid N on disk are owned by N inside
  the guest, so the rootfs stays as the template made it (nothing is chowned, and USERNS can be
  switched on and off), and a file on disk outside the map (N >= 65536) is nobody's inside;
- builds /proc, /sys, /dev and /tmp as host root, in namespaces the host's user namespace owns;
- then joins the user namespace as its uid 0 and execs init.

So the guest's root is uid BASE on the host, holds capabilities only over its own user
namespace, which owns none of its other namespaces: it cannot mount, change its network or its
host name, and the host's files (and cgroup files) are as foreign to it as to any other user."""

from __future__ import annotations

import os

from vstools.host.syscalls import CLONE_NEWUSER, setns, unshare


def write_id_maps(pid: int, base: int, size: int) -> None:
    """Map uids and gids 0..size-1 of ``pid``'s user namespace to base..base+size-1."""
    for kind in ("uid", "gid"):
        with open(f"/proc/{pid}/{kind}_map", "w") as handle:
            handle.write(f"0 {base} {size}\n")


def make_user_namespace(base: int, size: int) -> int:
    """A descriptor (close-on-exec) of a new user namespace whose ids 0..size-1 are the host's
    base..base+size-1. The namespace lives as long as the descriptor or a process in it."""
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    done_r, done_w = os.pipe2(os.O_CLOEXEC)
    child = os.fork()
    if child == 0:  # pragma: no cover - child process, reports through the pipe
        code = 1
        try:
            os.close(ready_r)
            os.close(done_w)
            unshare(CLONE_NEWUSER)
            os.write(ready_w, b"u")
            os.read(done_r, 1)  # until the parent has its descriptor
            code = 0
        finally:
            os._exit(code)
    os.close(ready_w)
    os.close(done_r)
    try:
        if os.read(ready_r, 1) != b"u":
            raise OSError("could not create a user namespace (see the kernel's user.max_*)")
        write_id_maps(child, base, size)
        return os.open(f"/proc/{child}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(ready_r)
        os.close(done_w)  # the child's read returns: it exits
        os.waitpid(child, 0)


def same_user_namespace(pid: int) -> bool:
    """True when ``pid`` is in this process's user namespace."""
    theirs = os.stat(f"/proc/{pid}/ns/user")
    ours = os.stat("/proc/self/ns/user")
    return (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)


def become_root_of(userns_fd: int) -> None:
    """Join the user namespace behind ``userns_fd`` as its uid and gid 0, with no supplementary
    group of the host. Call last, after every namespace the host owns has been joined or set up:
    from here on this process's capabilities only reach that user namespace."""
    setns(userns_fd, CLONE_NEWUSER)
    os.setgroups([])
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
