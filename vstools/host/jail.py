"""A jail for a privileged host program that reads or writes one directory of a guest's files
(rsync's server side in a pool copy): the program runs as root, but in a mount namespace of its
own whose root is an empty read-only tmpfs holding only the host's system directories
(read-only: the program and its libraries), /dev/null, and the directory at ``/data``.

Why: a guest's files are the guest's to shape. A root process walking them by path, while the
guest runs, can be sent elsewhere by a directory swapped for a symlink between two of its
steps (``var -> /etc``): rsync's sender would then read the host's /etc into the copy, and a
receiver fed by a hostile sender could write through such a link. In the jail, every path,
an absolute or ``..`` symlink included, resolves inside the jail: there is no /etc, /root,
/proc or guest store to reach, and nothing but ``/data`` (when ``writable``) can be written.

The mounts are cloned from the host's (``open_tree``) before anything else is mounted, made
read-only/nosuid/nodev with ``mount_setattr``, and attached to the tmpfs; after ``pivot_root``
the host's tree is detached. Nothing of this is visible outside the process: its namespace is
private, and the process (in the host's PID namespace, which no guest sees) ends with the
program it becomes."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from vstools.errors import NotFoundError, UsageError
from vstools.host.run import which
from vstools.host.syscalls import (
    AT_RECURSIVE,
    CLONE_NEWNS,
    MNT_DETACH,
    MOUNT_ATTR_NODEV,
    MOUNT_ATTR_NOSUID,
    MOUNT_ATTR_RDONLY,
    MS_NODEV,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    OPEN_TREE_CLOEXEC,
    OPEN_TREE_CLONE,
    PR_SET_NO_NEW_PRIVS,
    mount,
    mount_setattr,
    move_mount,
    open_tree,
    pivot_root,
    prctl,
    umount2,
    unshare,
)

# The host's directories a program needs to run (merged /usr or not): read-only in the jail.
SYSTEM_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
DATA = "/data"


def check_data_dir(path: str) -> Path:
    """``path`` as a jail's data directory: absolute, normal, a directory, and with no symlink
    on the way (the host's own path to a guest's files, never one the guest could shape)."""
    if not path.startswith("/") or os.path.normpath(path) != path.rstrip("/") or path == "/":
        raise UsageError(f"refused: {path!r} (an absolute, normal path to a directory)")
    real = os.path.realpath(path)
    if real != path.rstrip("/"):
        raise UsageError(f"refused: {path!r} goes through a symlink (to {real})")
    if not os.path.isdir(real):
        raise NotFoundError(f"no directory {path}")
    return Path(real)


def exec_jailed(argv: Sequence[str], data: Path, *, writable: bool, scratch: Path) -> NoReturn:
    """Become ``argv`` (its program found on the PATH now, run from the jail's read-only
    system directories) in the jail of ``data`` (``enter_jail``)."""
    program = which(argv[0])
    if program is None or not program.startswith("/usr/"):
        raise NotFoundError(f"{argv[0]} is not installed under /usr")
    enter_jail(data, writable=writable, scratch=scratch)
    os.execv(program, list(argv))  # noqa: S606 - argv checked by the caller, no shell


def enter_jail(data: Path, *, writable: bool, scratch: Path, keep: Sequence[str] = ()) -> None:
    """Move this process into a jail where ``data`` is ``/data``, the working directory.
    ``writable``: the process may write there (never anywhere else). ``keep``: host files or
    directories (the toolkit's own, never a guest's) it also needs, read-only at the same path
    (an ssh client's key, /etc/passwd). ``scratch``: an empty directory of the host's where the
    jail's root is built, in this process's own mount namespace only. For a process about to
    exec (a forked child): afterwards no host path but these exists for it."""
    scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
    unshare(CLONE_NEWNS)
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    data_attrs = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | (0 if writable else MOUNT_ATTR_RDONLY)
    trees = {DATA: _clone(str(data), data_attrs)}
    links: dict[str, str] = {}
    for name in SYSTEM_DIRS:
        where = f"/{name}"
        if os.path.islink(where):
            links[where] = os.readlink(where)
        elif os.path.isdir(where):
            trees[where] = _clone(where, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NODEV)
    trees["/dev/null"] = _clone("/dev/null", MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID)
    for where in keep:
        trees[where] = _clone(where, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV)
    directories = {DATA, *(where for where in trees if where != DATA and os.path.isdir(where))}
    mount("tmpfs", str(scratch), "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64k")
    for where, target in links.items():
        os.symlink(target, scratch / where.lstrip("/"))
    for where, tree in trees.items():
        inside = scratch / where.lstrip("/")
        inside.parent.mkdir(parents=True, exist_ok=True)
        if where in directories:
            inside.mkdir()
        else:
            inside.touch()
        move_mount(tree, str(inside))
        os.close(tree)
    mount(None, str(scratch), None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.chdir(scratch)
    pivot_root(".", ".")
    umount2(".", MNT_DETACH)
    os.chdir(DATA)
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def _clone(path: str, attrs: int) -> int:
    """A detached copy of the mounts at ``path`` (submounts included) with ``attrs`` set."""
    tree = open_tree(path, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE)
    if attrs:
        mount_setattr(tree, attrs)
    return tree
