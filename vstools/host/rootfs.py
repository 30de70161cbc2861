"""The one door through which the host reads and writes files inside a guest's root filesystem.

The guest owns every path component below its root and may plant symlinks (``etc/hostname ->
/etc/shadow``), FIFOs, device nodes or huge files there. Every lookup therefore goes through
openat2(2) with RESOLVE_IN_ROOT, so ``..`` and absolute symlinks are clamped to the guest's root
exactly as they would be inside the guest, and RESOLVE_NO_MAGICLINKS, so a ``/proc/*/root`` or
``/proc/*/fd/*`` reachable from the rootfs cannot lead back to the host. Writes replace the final
name with rename(2), which replaces a symlink there instead of following it.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import posixpath
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from types import TracebackType
from typing import Self, cast

# From linux/openat2.h (struct open_how, RESOLVE_*) and the kernel's syscall tables. openat2 came
# with Linux 5.6 as number 437 in the unified table that x86_64, aarch64 and every architecture
# added since share; alpha and ia64 offset theirs, and we do not run there.
_NR_OPENAT2 = 437
_AT_FDCWD = -100  # linux/fcntl.h
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

# Every lookup below the guest root: ".." and absolute symlinks stop at the root (the guest's own
# view), and magic links are refused outright. RESOLVE_IN_ROOT happens to refuse magic links today
# too, but openat2(2) says that may change, so we ask for it explicitly.
RESOLVE_GUEST = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS

# With RESOLVE_IN_ROOT the kernel answers EAGAIN when a concurrent rename could have let ".."
# escape; openat2(2) says to retry. The guest can keep renaming forever, so the retries are bounded.
_LOOKUP_ATTEMPTS = 32

TMP_PREFIX = ".vstools-"
TMP_SUFFIX = ".tmp"

# The host's own procfs (not the guest's), used to reopen an O_PATH fd for reading.
_PROC_SELF_FD = "/proc/self/fd"


class _OpenHow(ctypes.Structure):
    # struct open_how: three __u64, in this order (linux/openat2.h).
    _fields_ = (
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    )


@functools.cache
def _syscall() -> Callable[..., int]:
    libc = ctypes.CDLL(None, use_errno=True)
    fn = libc.syscall
    fn.restype = ctypes.c_long
    return cast(Callable[..., int], fn)


def openat2(
    dir_fd: int, path: str, flags: int, *, mode: int = 0, resolve: int = RESOLVE_GUEST
) -> int:
    """openat(2) with resolve flags; returns the new fd or raises OSError naming ``path``."""
    encoded = os.fsencode(path)
    if b"\0" in encoded:
        # c_char_p would silently cut the path at the NUL; os.open refuses the same way.
        raise ValueError(f"embedded null byte in path {path!r}")
    how = _OpenHow(flags=flags, mode=mode, resolve=resolve)
    for _ in range(_LOOKUP_ATTEMPTS):
        fd = _syscall()(
            ctypes.c_long(_NR_OPENAT2),
            ctypes.c_int(dir_fd),
            ctypes.c_char_p(encoded),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        if err not in (errno.EAGAIN, errno.EINTR):
            break
    if err == errno.ENOSYS:
        raise OSError(err, "the kernel lacks openat2(2) (Linux >= 5.6 needed)", path)
    raise OSError(err, os.strerror(err), path)


def probe_openat2() -> str | None:
    """None if openat2 with RESOLVE_IN_ROOT works here, else why not (for skips and reports)."""
    try:
        fd = openat2(_AT_FDCWD, ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        return f"openat2 with RESOLVE_IN_ROOT is unavailable: {exc}"
    os.close(fd)
    return None


def _split_final(path: str) -> tuple[str, str]:
    """Split ``path`` into (parent, final name); the name must be a plain directory entry."""
    parent, name = posixpath.split(path)
    if name in ("", ".", ".."):
        raise OSError(errno.EINVAL, "the last component must be a plain name", path)
    return parent or ".", name


def _not_a_directory(prefix: str) -> NotADirectoryError:
    # The caller's _named() puts the whole path in the filename; say which component failed.
    return NotADirectoryError(errno.ENOTDIR, f"{prefix!r} exists and is not a directory")


def _components(path: str) -> list[str]:
    return [part for part in path.split("/") if part not in ("", ".")]


class GuestRoot:
    """A guest's root directory, held open; every path given to it is resolved inside it."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.fspath(root)
        # The root path itself is the host's (e.g. /var/lib/vservers/NAME), so a plain open is
        # right; O_NOFOLLOW still refuses a root that has been swapped for a symlink.
        self._fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"GuestRoot({self.root!r})"

    def close(self) -> None:
        """Close the root fd; closing twice is harmless."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def read_bytes(self, path: str, *, max_bytes: int = 1 << 20) -> bytes:
        """The contents of the regular file at ``path`` (symlinks followed inside the root).

        Raises OSError for anything that is not a regular file, or is larger than ``max_bytes``.
        """
        with self._named(path):
            fd = self._reopen_regular(self._lookup(path, os.O_PATH), path)
            try:
                if os.fstat(fd).st_size > max_bytes:
                    raise OSError(errno.EFBIG, f"larger than {max_bytes} bytes", path)
                chunks: list[bytes] = []
                left = max_bytes + 1  # one byte more tells a file that grew after fstat
                while left > 0 and (chunk := os.read(fd, min(left, 1 << 16))):
                    chunks.append(chunk)
                    left -= len(chunk)
            finally:
                os.close(fd)
            data = b"".join(chunks)
            if len(data) > max_bytes:
                raise OSError(errno.EFBIG, f"larger than {max_bytes} bytes", path)
            return data

    def read_text(self, path: str, *, max_bytes: int = 1 << 20) -> str:
        """Like read_bytes, decoded as UTF-8; undecodable bytes become U+FFFD."""
        return self.read_bytes(path, max_bytes=max_bytes).decode("utf-8", errors="replace")

    def write_bytes(
        self, path: str, data: bytes, *, mode: int = 0o644, uid: int = 0, gid: int = 0
    ) -> None:
        """Atomically replace ``path`` with a regular file holding ``data``.

        A symlink at ``path`` is replaced, not followed; its parent is resolved inside the root.
        """
        with self._named(path):
            parent, name = _split_final(path)
            # O_RDONLY rather than O_PATH because the directory is fsync'd at the end; O_DIRECTORY
            # makes the kernel refuse anything else before calling a driver's open.
            dir_fd = self._lookup(parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                self._replace(dir_fd, name, data, mode=mode, uid=uid, gid=gid)
            finally:
                os.close(dir_fd)

    def write_text(self, path: str, text: str, **kw: int) -> None:
        """Like write_bytes, with ``text`` encoded as UTF-8."""
        self.write_bytes(path, text.encode("utf-8"), **kw)

    def makedirs(self, path: str, *, mode: int = 0o755) -> None:
        """Create ``path`` and its missing parents inside the root (like ``mkdir -p``)."""
        parts = _components(path)
        with self._named(path):
            for i, name in enumerate(parts):
                prefix = "/".join(parts[: i + 1])
                if self._is_dir(prefix):
                    continue
                parent_fd = self._lookup("/".join(parts[:i]) or ".", os.O_PATH | os.O_DIRECTORY)
                try:
                    os.mkdir(name, 0o700, dir_fd=parent_fd)
                except FileExistsError:
                    # A dangling symlink, or the guest raced us with a mkdir of its own.
                    if self._is_dir(prefix):
                        continue
                    raise _not_a_directory(prefix) from None
                finally:
                    os.close(parent_fd)
                # Created 0700 then chmod'ed: the mode is exact whatever the umask, and nobody in
                # the guest can use the directory before it has its final mode.
                fd = self._lookup(prefix, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fchmod(fd, mode)
                finally:
                    os.close(fd)

    def exists(self, path: str) -> bool:
        """Whether ``path`` resolves inside the root (a dangling symlink does not exist)."""
        try:
            fd = self._lookup(path, os.O_PATH)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return False
            raise
        os.close(fd)
        return True

    def readlink(self, path: str) -> str | None:
        """The target of the symlink at ``path`` (its parent resolved inside the root), or None
        when ``path`` is not a symlink or does not exist. The target is only read, never
        followed."""
        with self._named(path):
            parent, name = _split_final(path)
            try:
                dir_fd = self._lookup(parent, os.O_PATH | os.O_DIRECTORY)
            except (FileNotFoundError, NotADirectoryError):
                return None
            try:
                return os.readlink(name, dir_fd=dir_fd)
            except (FileNotFoundError, OSError) as exc:
                if isinstance(exc, FileNotFoundError) or exc.errno == errno.EINVAL:
                    return None
                raise
            finally:
                os.close(dir_fd)

    def listdir(self, path: str) -> list[str]:
        """The names in the directory at ``path`` (resolved inside the root), sorted; [] when
        it does not exist. The directory is opened once and listed through that descriptor."""
        with self._named(path):
            try:
                fd = self._lookup(path, os.O_RDONLY | os.O_DIRECTORY)
            except (FileNotFoundError, NotADirectoryError):
                return []
            try:
                return sorted(os.listdir(fd))
            finally:
                os.close(fd)

    def unlink(self, path: str, *, missing_ok: bool = False) -> None:
        """Remove the final name of ``path`` itself (a symlink is removed, never followed)."""
        try:
            with self._named(path):
                parent, name = _split_final(path)
                dir_fd = self._lookup(parent, os.O_PATH | os.O_DIRECTORY)
                try:
                    os.unlink(name, dir_fd=dir_fd)
                finally:
                    os.close(dir_fd)
        except FileNotFoundError:
            if not missing_ok:
                raise

    # -- internals ---------------------------------------------------------------------------

    def _root_fd(self) -> int:
        if self._fd < 0:
            raise ValueError(f"{self!r} is closed")
        return self._fd

    def _lookup(self, path: str, flags: int) -> int:
        return openat2(self._root_fd(), path, flags | os.O_CLOEXEC)

    def _is_dir(self, prefix: str) -> bool:
        """Whether ``prefix`` is a directory; False if missing, NotADirectoryError if not one."""
        try:
            fd = self._lookup(prefix, os.O_PATH | os.O_DIRECTORY)
        except FileNotFoundError:
            return False
        except NotADirectoryError:
            raise _not_a_directory(prefix) from None
        os.close(fd)
        return True

    def _reopen_regular(self, path_fd: int, path: str) -> int:
        """Open the regular file behind an O_PATH fd for reading; refuse anything else."""
        try:
            if not stat.S_ISREG(os.fstat(path_fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file", path)
            # Checking the type on an O_PATH fd first means a FIFO or device node is never
            # opened: opening one can block, or act (a watchdog arms on open). Reopening through
            # the host's /proc/self/fd yields the very inode checked, so the guest cannot swap it.
            return os.open(
                f"{_PROC_SELF_FD}/{path_fd}",
                os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC,
            )
        finally:
            os.close(path_fd)

    def _replace(
        self, dir_fd: int, name: str, data: bytes, *, mode: int, uid: int, gid: int
    ) -> None:
        tmp = f"{TMP_PREFIX}{os.urandom(8).hex()}{TMP_SUFFIX}"
        # O_EXCL|O_NOFOLLOW: a name the guest planted (even a symlink) is never written through.
        # 0600 until complete, so a partial file is never readable by others.
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=dir_fd,
        )
        renamed = False
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                # chown before chmod: chown clears the set-id bits a mode may ask for.
                os.fchown(fd, uid, gid)
                os.fchmod(fd, mode)
                os.fsync(fd)
            finally:
                os.close(fd)
            # rename(2) replaces whatever entry is at `name` (a symlink included) without
            # following it, and refuses with EISDIR when that entry is a directory.
            os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            renamed = True
            os.fsync(dir_fd)
        finally:
            if not renamed:
                with suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=dir_fd)

    @contextmanager
    def _named(self, path: str) -> Iterator[None]:
        """Re-raise OSError naming the guest and the path as given, not a bare relative name."""
        try:
            yield
        except OSError as exc:
            if exc.errno is None:
                raise
            where = posixpath.join(self.root, path.lstrip("/"))
            raise OSError(exc.errno, exc.strerror, where) from exc
