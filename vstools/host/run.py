"""The one door through which the toolkit starts processes. Every command line is logged,
copy-pasteable, before it runs (mkosi's ``+ command`` convention), and failures raise
CommandError with the status and the end of stderr."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO

from vstools.errors import CommandError, HostError
from vstools.host.syscalls import (
    CLONE_NEWNS,
    MS_BIND,
    MS_PRIVATE,
    MS_REC,
    PR_SET_PDEATHSIG,
    mount,
    prctl,
    unshare,
)

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


def run_pipeline(
    first: Sequence[str], second: Sequence[str], *, chunk: int = 1 << 20
) -> tuple[Result, Result, int]:
    """Run ``first | second`` (never through a shell): the bytes pass through this process,
    counted. Both results (``first``'s stdout is the stream, not kept) and the bytes passed.
    When ``second`` stops reading, ``first`` ends on a broken pipe."""
    log.debug("+ %s | %s", cmdline(first), cmdline(second))
    passed = 0
    with tempfile.TemporaryFile() as first_err:
        try:
            producer = subprocess.Popen(list(first), stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=first_err,
                                        close_fds=True)  # fmt: skip
            consumer = subprocess.Popen(list(second), stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        close_fds=True)  # fmt: skip
        except FileNotFoundError as exc:
            raise HostError(f"command not found: {exc.filename}") from None
        stream, sink = producer.stdout, consumer.stdin
        if stream is None or sink is None:
            raise HostError("no pipe between the two commands")
        with tempfile.TemporaryFile() as second_out, tempfile.TemporaryFile() as second_err:
            drains = [threading.Thread(target=shutil.copyfileobj, args=(source, sink))
                      for source, sink in ((consumer.stdout, second_out),
                                           (consumer.stderr, second_err))]  # fmt: skip
            for drain in drains:
                drain.start()
            try:
                while block := stream.read(chunk):
                    sink.write(block)
                    passed += len(block)
            except BrokenPipeError:
                pass
            finally:
                stream.close()
                with contextlib.suppress(BrokenPipeError):
                    sink.close()
                first_code, second_code = producer.wait(), consumer.wait()
                for drain in drains:
                    drain.join()
            texts = []
            for handle in (first_err, second_out, second_err):
                handle.seek(0)
                texts.append(handle.read().decode(errors="replace"))
    return (
        Result(tuple(first), first_code, "", texts[0]),
        Result(tuple(second), second_code, texts[1], texts[2]),
        passed,
    )


def run_fed(argv: Sequence[str], blocks: Iterable[bytes]) -> int:
    """Run ``argv`` with ``blocks`` on its stdin (its stdout and stderr are this process's):
    its exit status. When ``blocks`` raises (a stream refused as it is read), the command is
    killed by its PID before the exception goes on: it never gets the rest."""
    line = cmdline(argv)
    log.debug("+ %s < (fed)", line)
    try:
        proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, close_fds=True)
    except FileNotFoundError:
        raise HostError(f"command not found: {argv[0]} (in {line})") from None
    sink = proc.stdin
    if sink is None:
        raise HostError(f"no pipe to {line}")
    try:
        for block in blocks:
            sink.write(block)
        sink.close()
    except BrokenPipeError:
        pass  # it stopped reading: its exit status says why
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        with contextlib.suppress(BrokenPipeError):
            sink.close()
    return proc.wait()


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    user: tuple[int, int] | None = None,
    die_with_parent: bool = False,
    stderr: int | None = subprocess.DEVNULL,
    pass_fds: Sequence[int] = (),
    binds: Sequence[tuple[str, str]] = (),
) -> Process:
    """Start ``argv`` in the background (a server the caller stops by the returned PID),
    stdin and stdout on /dev/null. ``user`` (uid, gid): it runs as that user from the start,
    never as root; ``die_with_parent``: the kernel sends it SIGTERM when this process dies, even
    by ``kill -9`` (set after the user change, which would clear it); ``pass_fds`` stay open
    in it (files it reads as /proc/self/fd/N, whatever the permissions of their directory);
    ``binds`` (source, target): bind mounts in a private mount namespace of its own, made as
    root before the user change (for a program whose files are at fixed paths), which the host
    never sees."""

    def preexec() -> None:
        """In the child, before exec: its mounts, the user change, the parent-death signal."""
        if binds:
            unshare(CLONE_NEWNS)
            mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing propagates back to the host
            for source, target in binds:
                mount(source, target, None, MS_BIND)
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
            preexec_fn=preexec if user or die_with_parent or binds else None,  # noqa: PLW1509
        )
    except FileNotFoundError:
        raise HostError(f"command not found: {argv[0]} (in {line})") from None
    except subprocess.SubprocessError as exc:  # the mounts or the user change, before the exec
        raise HostError(f"{argv[0]} could not be started: {exc} (in {line})") from None


def converse(argv: Sequence[str], *, stderr: IO[bytes]) -> Process:
    """Start ``argv`` with its stdin and stdout as pipes to this process (lines written to it,
    its answer read: ``finish``), its stderr into ``stderr`` (a file: never a pipe that fills
    up while nobody reads it)."""
    line = cmdline(argv)
    log.debug("+ %s", line)
    try:
        return subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=stderr, close_fds=True)  # fmt: skip
    except OSError as exc:
        raise HostError(f"{argv[0]} could not be started: {exc} (in {line})") from None


def finish(process: Process, data: bytes | None = None, *, timeout_s: float | None) -> bytes | None:
    """Write ``data`` to a ``converse`` process, close its stdin, read its stdout to the end
    and wait for it: that output, or None when it did not end within ``timeout_s`` (it is then
    killed, by its PID)."""
    try:
        out, _ = process.communicate(data, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        return None
    return out or b""


def stop(process: Process, *, timeout_s: float = 5.0) -> None:
    """Stop a process this one started (SIGTERM, then SIGKILL after ``timeout_s``), by its
    PID, and reap it."""
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def which(name: str, path: str | None = None) -> str | None:
    """The full path of a host program, or None (for probes and clear 'not installed' errors)."""
    for directory in (path or os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")).split(":"):
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None
