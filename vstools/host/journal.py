"""Logging: every change is journalled to syslog with the tag ``vs-tools[pid]`` as a ``BEGIN``
line, one line per mutating step, and ``SUCCESS`` or ``ABORTED: reason``. Humans get warnings
(and with ``-v`` everything) on stderr."""

from __future__ import annotations

import logging
import logging.handlers
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("vstools")
TAG = "vs-tools"


class _SyslogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        """The record's message behind the syslog tag, ``vs-tools[pid]: message``."""
        # RFC 3164 tag: the daemon name and the pid, as logger(1) and every syslog reader expect.
        return f"{TAG}[{os.getpid()}]: {record.getMessage()}"


def setup_logging(*, verbose: bool = False, syslog_socket: str | None = "/dev/log") -> str | None:
    """Configure the ``vstools`` logger. Returns why syslog is unavailable, or None."""
    log.handlers.clear()
    log.setLevel(logging.DEBUG)
    log.propagate = False
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setLevel(logging.DEBUG if verbose else logging.WARNING)
    stderr.setFormatter(logging.Formatter("%(name)s: %(message)s" if verbose else "%(message)s"))
    log.addHandler(stderr)
    if syslog_socket is None:
        return "syslog disabled in vs-tools.conf"
    try:
        handler = logging.handlers.SysLogHandler(
            address=syslog_socket,
            facility=logging.handlers.SysLogHandler.LOG_DAEMON,
            socktype=socket.SOCK_DGRAM,
        )
    except OSError as exc:
        return f"syslog socket {syslog_socket} unavailable: {exc.strerror or exc}"
    # The handler swallows a failed connect and would then print a traceback for every record;
    # without a listening syslog we journal nothing and tell the caller why.
    sock = getattr(handler, "socket", None)
    if sock is None or sock.fileno() < 0:
        handler.close()
        return f"syslog socket {syslog_socket} unavailable (no syslog daemon listening)"
    handler.setLevel(logging.INFO)
    handler.setFormatter(_SyslogFormatter())
    log.addHandler(handler)
    return None


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
