"""The one door through which the toolkit starts processes. Every command line is logged,
copy-pasteable, before it runs (mkosi's ``+ command`` convention), and failures raise
CommandError with the status and the end of stderr."""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vstools.errors import CommandError, HostError
from vstools.host.syscalls import PR_SET_PDEATHSIG, prctl

log = logging.getLogger("vstools.run")

Process = subprocess.Popen[bytes]  # a background process started by ``spawn``


@dataclass(frozen=True, slots=True)
class Result:
    """A finished command: its argv, exit status and output (empty when not captured)."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


def cmdline(argv: Sequence[str]) -> str:
    """The argv as one shell-quoted line: what the log shows and a human can paste."""
    return shlex.join(argv)


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    timeout_s: float | None = None,
    capture: bool = True,
) -> Result:
    """Run ``argv`` (never through a shell), wait for it and return its output.

    ``env`` replaces the environment when given; stdin is /dev/null unless ``input`` is given,
    so a child never reads the administrator's terminal by accident."""
    line = cmdline(argv)
    log.debug("+ %s", line)
    try:
        proc = subprocess.run(
            list(argv),
            input=input,
            stdin=subprocess.DEVNULL if input is None else None,
            capture_output=capture,
            text=True,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            timeout=timeout_s,
            close_fds=True,
            check=False,
        )
    except FileNotFoundError:
        raise HostError(f"command not found: {argv[0]} (in {line})") from None
    except subprocess.TimeoutExpired:
        raise HostError(f"command timed out after {timeout_s} s: {line}") from None
    result = Result(tuple(argv), proc.returncode, proc.stdout or "", proc.stderr or "")
    if check and proc.returncode != 0:
        raise CommandError(line, proc.returncode, result.stderr)
    return result


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    user: tuple[int, int] | None = None,
    die_with_parent: bool = False,
    stderr: int | None = subprocess.DEVNULL,
    pass_fds: Sequence[int] = (),
) -> Process:
    """Start ``argv`` in the background (a server the caller stops by the returned PID),
    stdin and stdout on /dev/null. ``user`` (uid, gid): it runs as that user from the start,
    never as root; ``die_with_parent``: the kernel sends it SIGTERM when this process dies, even
    by ``kill -9`` (set after the user change, which would clear it); ``pass_fds`` stay open
    in it (files it reads as /proc/self/fd/N, whatever the permissions of their directory)."""

    def preexec() -> None:
        """In the child, before exec: the user change, then the parent-death signal."""
        if user is not None:
            os.setgroups([])
            os.setgid(user[1])
            os.setuid(user[0])
        if die_with_parent:
            prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() == 1:  # the parent died before the line above: do not outlive it
                os._exit(1)

    line = cmdline(argv)
    log.debug("+ %s &", line)
    try:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=dict(env) if env is not None else None,
            close_fds=True,
            pass_fds=tuple(pass_fds),
            preexec_fn=preexec if user or die_with_parent else None,  # noqa: PLW1509
        )
    except FileNotFoundError:
        raise HostError(f"command not found: {argv[0]} (in {line})") from None


def which(name: str, path: str | None = None) -> str | None:
    """The full path of a host program, or None (for probes and clear 'not installed' errors)."""
    for directory in (path or os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")).split(":"):
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None
