"""The one door to OpenSSH and rsync, the master's way to its slaves (DESIGN §10), and the only
importer of ``sh``. Every command line is built by a pure ``build_*_argv`` function and logged
as ``+ <command line>`` before it runs, as vstools.host.run does for the others.

ssh always runs in batch mode (never a prompt, never a terminal), with the key and known_hosts
file of vs-tools.conf and strict host-key checking (an unknown or changed host key is refused,
never learnt), connection reuse (ControlMaster, one socket per slave under RUN_DIR/ssh) and
connect and keep-alive timeouts, so an unreachable slave fails in seconds. ssh_config still
applies (Host aliases, ProxyJump, Port, User), as administrators configure it. A remote command
is one string the remote shell splits: it is quoted word by word, never pasted."""

from __future__ import annotations

import enum
import json
import logging
import os
import re
import select
import shlex
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from vstools.errors import CommandError, ExitCode, HostError, NotFoundError, StateError, VSError
from vstools.host.run import Process, converse, finish

log = logging.getLogger("vstools.ssh")

SSH_FAILED = 255  # what ssh exits with when it could not connect or was cut
RSYNC_VANISHED = 24  # some files vanished while the pass read them (a running guest)
RSYNC_PARTIAL = 23  # some files could not be transferred: never a complete copy
# An armed call (Remote.arm) prints ARMED once prepared, then acts only on a line that starts
# with GO; any other line, or the end of its stdin (the master gave up or died), and it does
# nothing.
ARMED = "armed"
GO = "go"
READY_TIMEOUT_S = 60.0  # an armed call not ready by then is given up (a fresh call is made)


class Bound(enum.Enum):
    """The timeout of a slave's step: SshOptions.call_timeout_s (SSH_CALL_TIMEOUT)."""

    STEP = "step"


STEP = Bound.STEP


@dataclass(frozen=True, slots=True)
class SshOptions:
    """How the master reaches its slaves: key, known_hosts file, connection reuse, timeouts."""

    key: str | None = None
    known_hosts: str | None = None
    control_dir: Path | None = None  # ControlMaster sockets; None: no connection reuse
    connect_timeout_s: int = 10
    call_timeout_s: float = 120.0  # a step on a slave (Remote.call); a copy is not bounded
    alive_interval_s: int = 5
    alive_count: int = 3  # keep-alives without an answer before ssh gives up
    config_file: str | None = None  # ssh -F; None: the usual ssh_config
    port: int | None = None  # None: ssh_config's, or 22
    host_key_alias: str | None = None  # the name the host key is looked up by
    # The socket of a connection opened before (build_ssh_master_argv): used when it is there,
    # never made; without it, ssh connects on its own.
    mux_socket: str | None = None


def build_ssh_argv(options: SshOptions, host: str, remote: Sequence[str] = ()) -> list[str]:
    """The ssh command line that runs ``remote`` (each word quoted) on ``host``."""
    argv = ["ssh", *ssh_option_args(options), "-T", host]
    if remote:
        argv += ["--", shlex.join(remote)]
    return argv


def ssh_option_args(options: SshOptions) -> list[str]:
    """The options every ssh of the toolkit takes (also rsync's ``-e`` and borg's)."""
    args: list[str] = []
    if options.config_file:
        args += ["-F", options.config_file]
    settings = {
        "BatchMode": "yes",
        "StrictHostKeyChecking": "yes",
        "ConnectTimeout": str(options.connect_timeout_s),
        "ServerAliveInterval": str(options.alive_interval_s),
        "ServerAliveCountMax": str(options.alive_count),
        "ForwardAgent": "no",
        "ClearAllForwardings": "yes",
    }
    if options.known_hosts:
        settings["UserKnownHostsFile"] = options.known_hosts
        settings["GlobalKnownHostsFile"] = "/dev/null"
    if options.key:
        args += ["-i", options.key]
        settings["IdentitiesOnly"] = "yes"
    if options.port is not None:
        args += ["-p", str(options.port)]
    if options.host_key_alias:
        settings["HostKeyAlias"] = options.host_key_alias
    if options.mux_socket is not None:
        settings |= {"ControlMaster": "no", "ControlPath": options.mux_socket}
    elif options.control_dir is not None:
        settings |= {
            "ControlMaster": "auto",
            "ControlPath": str(options.control_dir / "%C"),
            "ControlPersist": "60",
        }
    for key, value in settings.items():
        args += ["-o", f"{key}={value}"]
    return args


def build_ssh_master_argv(options: SshOptions, host: str, socket: str) -> list[str]:
    """ssh holding a connection to ``host`` open, in the foreground, for other ssh processes
    to reuse through ``socket`` (SshOptions.mux_socket); no command, no session of its own."""
    alone = replace(options, control_dir=None, mux_socket=None)
    return ["ssh", "-o", "ControlMaster=yes", "-o", f"ControlPath={socket}",
            "-o", "ControlPersist=no", *ssh_option_args(alone), "-N", "-T", host]  # fmt: skip


@dataclass(frozen=True, slots=True)
class Done:
    """What a finished remote command or copy gave: its exit status and its output."""

    code: int
    stdout: str
    stderr: str

    def reason(self) -> str:
        """The first line of stderr (the cause), or the status."""
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return lines[0].strip() if lines else f"exit status {self.code}"


class Unreachable(HostError):
    """ssh could not reach the slave (exit 255): down, refused, timed out, host key refused."""


class TimedOut(HostError):
    """A command (ssh, rsync) did not finish within its timeout; it was killed."""


class RemoteError(VSError):
    """The slave's vs-fonctions failed: its message, with its own exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        known = {int(code) for code in ExitCode}
        self.exit_code = ExitCode(exit_code) if exit_code in known else ExitCode.HOST


def _command(argv: Sequence[str]) -> Any:
    import sh

    return sh.Command(argv[0]).bake(*argv[1:])


def sh_call_options(version: str) -> dict[str, Any]:
    """The ``sh`` call options every run uses, for the installed ``sh``: 2.x returns the output
    string unless asked for the command with ``_return_cmd``, which 1.x (Debian 12 ships 1.14)
    does not know and rejects; 1.x always returns the command."""
    options: dict[str, Any] = {
        "_out_bufsize": 0,
        "_err_to_out": False,
        "_tty_in": False,
        "_tty_out": False,
        "_ok_code": list(range(256)),
        "_encoding": "utf-8",
        "_decode_errors": "replace",
    }
    if int(version.split(".", maxsplit=1)[0]) >= 2:
        options["_return_cmd"] = True
    return options


def run_argv(
    argv: Sequence[str],
    *,
    input: str | None = None,
    timeout_s: float | None = 120.0,
    on_output: Callable[[str], None] | None = None,
    preexec: Callable[[], None] | None = None,
) -> Done:
    """Run ``argv`` (ssh, rsync) without a terminal, stdin ``input`` or nothing; its status and
    output, whatever the status (the caller decides). ``on_output`` gets stdout as it comes,
    in chunks (rsync's progress redraws its line with carriage returns). ``preexec`` runs in
    the child before it execs (vstools.host.jail.enter_jail); the child then inherits no
    descriptor but its three, Python making every other one close-on-exec."""
    import sh

    log.debug("+ %s", shlex.join(argv))
    chunks: list[str] = []

    def collect(chunk: str) -> None:
        """Keep a chunk of stdout, and pass it on as it comes."""
        chunks.append(chunk)
        if on_output is not None:
            on_output(chunk)

    # sh closes descriptors after preexec by listing /dev/fd, which a jail does not have.
    jailed = {"_preexec_fn": preexec, "_close_fds": False} if preexec is not None else {}
    try:
        process = _command(argv)(
            **sh_call_options(sh.__version__),
            _in=input if input is not None else "",
            _out=collect,
            _timeout=timeout_s,
            **jailed,
        )
    except sh.TimeoutException:
        raise TimedOut(f"{shlex.join(argv[:1])} did not finish within {timeout_s:g} s") from None
    except sh.CommandNotFound:
        raise HostError(f"{argv[0]} is not installed") from None
    stderr = process.stderr
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else str(stderr)
    return Done(int(process.exit_code), "".join(chunks), text)


@dataclass(frozen=True, slots=True)
class Remote:
    """One slave, reached with ssh."""

    host: str
    options: SshOptions

    def run(
        self,
        argv: Sequence[str],
        *,
        input: str | None = None,
        timeout_s: float | Bound | None = STEP,
        check: bool = True,
    ) -> Done:
        """Run ``argv`` on the slave, within ``timeout_s`` (STEP: SSH_CALL_TIMEOUT; None: no
        bound, for a copy, whose link ssh's keep-alives watch). Unreachable when ssh could not
        get there, TimedOut naming the command when it took too long; with ``check``,
        CommandError when the command failed."""
        bound = self.options.call_timeout_s if isinstance(timeout_s, Bound) else timeout_s
        try:
            done = run_argv(build_ssh_argv(self.options, self.host, argv), input=input,
                            timeout_s=bound)  # fmt: skip
        except TimedOut:
            raise TimedOut(
                f"{self.host}: {shlex.join(argv)} did not finish within {bound:g} s"
            ) from None
        if done.code == SSH_FAILED:
            raise Unreachable(f"{self.host}: unreachable: {done.reason()}")
        if check and done.code != 0:
            raise CommandError(f"{shlex.join(argv)} on {self.host}", done.code, done.stderr)
        return done

    def call(
        self,
        function: str,
        *args: str,
        timeout_s: float | Bound | None = STEP,
        input: str | None = None,
    ) -> Any:
        """Call ``vs-fonctions --json FUNCTION ARGS`` on the slave, with the slave's own
        configuration (``input`` on its stdin): its result, or RemoteError with the slave's
        message and exit code."""
        done = self.run(["vs-fonctions", "--json", function, *args], timeout_s=timeout_s,
                        check=False, input=input)  # fmt: skip
        return self.answer(done)

    def arm(self, function: str, *args: str) -> Armed:
        """Start ``vs-fonctions --json FUNCTION ARGS`` on the slave now, for it to act later
        (Armed.go): an armed function prepares what it can (the program's start, its imports,
        its connections), says so, and waits for the word."""
        argv = build_ssh_argv(self.options, self.host, ["vs-fonctions", "--json", function, *args])
        errors = tempfile.TemporaryFile()  # noqa: SIM115 - closed by Armed
        try:
            process = converse(argv, stderr=errors)
        except HostError:
            errors.close()
            raise
        return Armed(self, function, process, errors)

    def answer(self, done: Done) -> Any:
        """The result of a vs-fonctions call that ended as ``done``, or its error."""
        try:
            answer = json.loads(done.stdout) if done.stdout.strip() else {}
        except ValueError:
            answer = {}
        if done.code == 0 and isinstance(answer, dict) and "result" in answer:
            return answer["result"]
        message = answer.get("error") if isinstance(answer, dict) else None
        if not message:
            message = done.reason()
            if done.code == 127:
                message = f"vs-fonctions is not on the PATH of {self.host} ({message})"
        kinds: dict[int, type[VSError]] = {3: NotFoundError, 4: StateError}
        code = int(answer.get("exit_code", done.code)) if isinstance(answer, dict) else done.code
        if code in kinds:
            raise kinds[code](f"{self.host}: {message}")
        raise RemoteError(f"{self.host}: {message}", code)


class NotArmed(HostError):
    """An armed call ended, or was given up, before it was ready: it did nothing."""


@dataclass
class Armed:
    """A vs-fonctions call started ahead on a slave (Remote.arm), prepared and waiting: ``go``
    makes it act and returns its result; ``cancel`` (or the master's death, which closes its
    stdin) makes it end without acting."""

    remote: Remote
    function: str
    process: Process
    errors: IO[bytes]
    ready: bool | None = field(default=None)  # None: not known yet

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> bool:
        """Whether the call said it is prepared (its first line; read byte by byte, so the
        answer after it stays in the pipe for ``go``)."""
        if self.ready is not None:
            return self.ready
        if self.process.stdout is None:
            return False
        descriptor, line = self.process.stdout.fileno(), b""
        deadline = time.monotonic() + timeout_s
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([descriptor], [], [], left)[0]:
                break
            byte = os.read(descriptor, 1)
            if not byte:
                break
            line += byte
        self.ready = line.decode(errors="replace").strip() == ARMED
        return self.ready

    def go(self, *words: str, timeout_s: float | None = None) -> Any:
        """Tell the prepared call to act (``words`` after GO on its line): its result, as
        Remote.call gives it. NotArmed, the call ended, when it never got ready: then it did
        nothing, and the caller may make the call afresh."""
        if not self.wait_ready():
            self._end()
            why = self._stderr()
            self.errors.close()
            raise NotArmed(f"{self.remote.host}: {self.function} was not ready: {why}")
        out = finish(self.process, (" ".join((GO, *words)) + "\n").encode(), timeout_s=timeout_s)
        done = Done(self.process.returncode, (out or b"").decode(errors="replace"), self._stderr())
        self.errors.close()
        if out is None:
            raise TimedOut(f"{self.remote.host}: {self.function} did not finish within"
                            f" {timeout_s} s")  # fmt: skip
        if done.code == SSH_FAILED:
            raise Unreachable(f"{self.remote.host}: unreachable: {done.reason()}")
        return self.remote.answer(done)

    def cancel(self) -> None:
        """Close the call's stdin, so that it ends without acting, and wait for it (its ssh is
        killed, by its PID, if it does not end within 10 s)."""
        self._end()
        self.errors.close()

    def _end(self) -> None:
        """Close the call's stdin and wait for its end (its ssh killed after 10 s)."""
        if self.process.returncode is None:
            finish(self.process, timeout_s=10)

    def _stderr(self) -> str:
        """What the call wrote on stderr (its last line: the cause)."""
        if self.errors.closed:
            return f"exit status {self.process.poll()}"
        self.errors.seek(0)
        lines = [x for x in self.errors.read().decode(errors="replace").splitlines() if x.strip()]
        return lines[-1].strip() if lines else f"exit status {self.process.poll()}"


def wait_for_go(stdin: IO[str], stdout: IO[str]) -> list[str] | None:
    """In an armed call, on the slave: say it is prepared, then wait for the master's word. The
    words after GO, or None (act on nothing) for any other line or the end of stdin."""
    stdout.write(f"{ARMED}\n")
    stdout.flush()
    words = stdin.readline().split()
    if words[:1] != [GO]:
        return None
    return words[1:]


def resolve(options: SshOptions, host: str) -> tuple[str, int]:
    """The address and port ssh reaches ``host`` at, as ssh_config makes them (``ssh -G``)."""
    done = run_argv(["ssh", *ssh_option_args(options), "-G", host], timeout_s=10)
    found = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    if done.code != 0 or "hostname" not in found:
        raise HostError(f"ssh -G {host} failed: {done.reason()}")
    return found["hostname"], int(found.get("port", "22"))


def known_host_lines(known_hosts: str, host: str) -> str:
    """The lines of ``known_hosts`` for ``host`` (hashed entries included), for another
    machine to check that host's key by the same name (HostKeyAlias)."""
    done = run_argv(["ssh-keygen", "-F", host, "-f", known_hosts], timeout_s=10)
    lines = [line for line in done.stdout.splitlines() if line and not line.startswith("#")]
    if not lines:
        raise NotFoundError(f"{known_hosts} has no host key for {host}")
    return "".join(f"{line}\n" for line in lines)


def keygen_argv(path: str, comment: str) -> list[str]:
    """ssh-keygen making an ed25519 key pair without a passphrase at ``path``."""
    return ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path]


# -- rsync ---------------------------------------------------------------------------------------

_PROGRESS = re.compile(r"([\d,]+)\s+(\d+)%\s+(\S+/s)\s+(\S+)")


@dataclass(frozen=True, slots=True)
class Progress:
    """One redraw of rsync's --info=progress2 line: bytes so far, percent, rate, time left."""

    bytes: int
    percent: int
    rate: str
    eta: str


class ProgressReader:
    """rsync's output fed as it comes (a character at a time, unbuffered): the figures of each
    line rsync completes (it redraws its progress line with carriage returns)."""

    def __init__(self) -> None:
        self.pending = ""
        self.last: Progress | None = None

    def feed(self, chunk: str) -> Progress | None:
        """Take a chunk; the figures of the last line it completed, if any."""
        self.pending += chunk
        cut = max(self.pending.rfind("\r"), self.pending.rfind("\n"))
        if cut < 0:
            return None
        complete, self.pending = self.pending[:cut], self.pending[cut + 1 :]
        figures = parse_progress(complete)
        if figures is not None:
            self.last = figures
        return figures


def parse_progress(text: str) -> Progress | None:
    """The last complete progress figure in a chunk of rsync's output, if any."""
    found = None
    for piece in re.split(r"[\r\n]", text):
        match = _PROGRESS.search(piece)
        if match:
            found = Progress(int(match[1].replace(",", "")), int(match[2]), match[3], match[4])
    return found


def build_rsync_argv(
    source: str,
    target: str,
    *,
    ssh: SshOptions | None = None,
    delete: bool = True,
    bwlimit_kib: int | None = None,
    compress: bool = False,
    partial: bool = True,
    extra: Sequence[str] = (),
    rsync_path: str | None = None,
    progress: bool = True,
) -> list[str]:
    """rsync keeping everything a guest's files carry (hard links, ACLs, xattrs, sparse files,
    numeric owners, devices), ``--delete`` where the copy must equal its source, partial files
    kept for a resumed pass, progress figures on stdout."""
    argv = ["rsync", "-aHAXS", "--numeric-ids"]
    if progress:
        argv += ["--info=progress2", "--no-inc-recursive"]
    if delete:
        argv.append("--delete")
    if partial:
        # A file cut halfway is kept where it goes, so a resumed pass sends only its rest. No
        # --partial-dir: rsync would skip every directory of that name in the guest's files,
        # and a copy is never taken for complete before it is verified by checksums anyway.
        argv.append("--partial")
    if bwlimit_kib:
        argv.append(f"--bwlimit={bwlimit_kib}")
    if compress:
        argv.append("--compress")
    if ssh is not None:
        argv += ["-e", shlex.join(["ssh", *ssh_option_args(ssh)])]
    if rsync_path:
        argv.append(f"--rsync-path={rsync_path}")
    return [*argv, *extra, source, target]
