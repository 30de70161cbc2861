"""Host-side file primitives: atomic replacement and locks (mkdir/flock style, as borg's).

These are for the host's own files (configs, state). Files inside a guest's rootfs go through
``vstools.rootfs`` instead, which never follows the guest's symlinks out of it."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from vstools.errors import StateError


def _temporary_beside(target: Path) -> tuple[int, str]:
    """A new file beside ``target``, created as tempfile.mkstemp does (exclusive, 0600, not
    following a symlink), without importing tempfile (and random, shutil) on every start."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(100):
        tmp = str(target.parent / f".{target.name}.{os.urandom(6).hex()}.tmp")
        try:
            return os.open(tmp, flags, 0o600), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, f"no free temporary name beside {target}")


def atomic_write(
    path: str | os.PathLike[str], data: bytes | str, *, mode: int = 0o644, durable: bool = True
) -> None:
    """Replace ``path`` with ``data`` so a reader sees the old or the new file, never half of
    one: write a temporary file beside it, fsync, rename over, fsync the directory. Without
    ``durable`` the fsyncs are skipped (figures rewritten every few seconds: a power cut may
    lose the last ones, a reader still never sees half a file)."""
    target = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = _temporary_beside(target)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if not durable:
        return
    dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextmanager
def locked(
    path: str | os.PathLike[str],
    *,
    what: str,
    timeout_s: float = 0.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (created if missing) for the ``with`` block.

    The holder writes its pid and ``what`` into the file so a refused caller can say who holds
    it. flock is released by the kernel when the holder dies, so a crash never leaves a stale
    lock behind."""
    lock_path = Path(path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = clock() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                if clock() >= deadline:
                    holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "unknown"
                    raise StateError(f"{what}: locked by {holder} ({lock_path})") from None
                sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {what}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


@contextmanager
def try_lock(path: str | os.PathLike[str]) -> Iterator[bool]:
    """Try once for an exclusive flock on ``path`` (created if missing): the block gets True
    while it holds it, False when another process does."""
    fd = take_lock(path)
    try:
        yield fd is not None
    finally:
        if fd is not None:
            os.close(fd)


def take_lock(path: str | os.PathLike[str], *, mode: int = 0o644) -> int | None:
    """Try once for an exclusive flock on ``path`` (created if missing): the descriptor that
    holds it (close it to release), or None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        raise
    return fd


def is_locked(path: str | os.PathLike[str]) -> bool:
    """True while some process holds an exclusive flock on ``path`` (a missing file: False)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
