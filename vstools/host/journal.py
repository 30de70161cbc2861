"""Logging: every change is journalled to syslog with the tag ``vs-tools[pid]`` as a ``BEGIN``
line, one line per mutating step, and ``SUCCESS`` or ``ABORTED: reason``. Humans get warnings
(and with ``-v`` everything) on stderr."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

log = logging.getLogger("vstools")
TAG = "vs-tools"


class _SyslogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        """The record's message behind the syslog tag, ``vs-tools[pid]: message``."""
        # RFC 3164 tag: the daemon name and the pid, as logger(1) and every syslog reader expect.
        return f"{TAG}[{os.getpid()}]: {record.getMessage()}"


class _DeferredSyslog(logging.Handler):
    """The syslog handler, made at the first record to journal or before the process forks,
    whichever comes first: a command that only shows (``vs-control --all``) journals nothing
    and never pays for ``logging.handlers`` and ``socket`` (issue 17: about 4 ms of imports)
    nor the connection, while a forked child (a supervisor, vs-exec's helper) inherits the
    socket made before its fork, as it did when the handler was made at once. Where syslog is
    unavailable, records are dropped, as when ``setup_logging`` finds it unavailable."""

    def __init__(self, syslog_socket: str) -> None:
        super().__init__(logging.INFO)
        self.syslog_socket = syslog_socket
        self.made: logging.Handler | None = None
        self.tried = False

    def make(self) -> None:
        """Make the syslog handler, once."""
        with self.lock or nullcontext():
            if not self.tried:
                self.tried = True
                self.made, _ = _syslog_handler(self.syslog_socket)

    def emit(self, record: logging.LogRecord) -> None:
        """Journal ``record`` through the syslog handler, made on the first call."""
        self.make()
        if self.made is not None:
            self.made.handle(record)

    def close(self) -> None:
        """Close the syslog handler if it was made."""
        if self.made is not None:
            self.made.close()
        super().close()


def _make_deferred_before_fork() -> None:
    for handler in log.handlers:
        if isinstance(handler, _DeferredSyslog):
            handler.make()


os.register_at_fork(before=_make_deferred_before_fork)


def _syslog_handler(syslog_socket: str) -> tuple[logging.Handler | None, str | None]:
    """A handler journalling INFO and above to ``syslog_socket``, or None and why not."""
    import logging.handlers
    import socket

    try:
        handler = logging.handlers.SysLogHandler(
            address=syslog_socket,
            facility=logging.handlers.SysLogHandler.LOG_DAEMON,
            socktype=socket.SOCK_DGRAM,
        )
    except OSError as exc:
        return None, f"syslog socket {syslog_socket} unavailable: {exc.strerror or exc}"
    # The handler swallows a failed connect and would then print a traceback for every record;
    # without a listening syslog we journal nothing and tell the caller why.
    sock = getattr(handler, "socket", None)
    if sock is None or sock.fileno() < 0:
        handler.close()
        return None, f"syslog socket {syslog_socket} unavailable (no syslog daemon listening)"
    handler.setLevel(logging.INFO)
    handler.setFormatter(_SyslogFormatter())
    return handler, None


def setup_logging(
    *, verbose: bool = False, syslog_socket: str | None = "/dev/log", deferred: bool = False
) -> str | None:
    """Configure the ``vstools`` logger. Returns why syslog is unavailable, or None. With
    ``deferred``, syslog is reached at the first record to journal (``_DeferredSyslog``) and
    whether it is available is not known here: None."""
    log.handlers.clear()
    log.setLevel(logging.DEBUG)
    log.propagate = False
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setLevel(logging.DEBUG if verbose else logging.WARNING)
    stderr.setFormatter(logging.Formatter("%(name)s: %(message)s" if verbose else "%(message)s"))
    log.addHandler(stderr)
    if syslog_socket is None:
        return "syslog disabled in vs-tools.conf"
    if deferred:
        log.addHandler(_DeferredSyslog(syslog_socket))
        return None
    handler, problem = _syslog_handler(syslog_socket)
    if handler is not None:
        log.addHandler(handler)
    return problem


@contextmanager
def operation(what: str) -> Iterator[None]:
    """Journal one change: ``BEGIN what``, then ``SUCCESS what`` or ``ABORTED: what: reason``."""
    log.info("BEGIN %s", what)
    try:
        yield
    except BaseException as exc:
        reason = str(exc) or type(exc).__name__
        log.info("ABORTED: %s: %s", what, reason)
        raise
    log.info("SUCCESS %s", what)
