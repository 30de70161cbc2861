"""Running a command inside a running guest (vs-exec, vs-enter): in all of the guest's
namespaces and its cgroup, with its capability set and seccomp filter, and with no descriptor
of the host: the command gets a new pseudo-terminal of the guest's own devpts (interactive use)
or fresh pipes, which this process relays to its own terminal or streams (catalogue S3, S13).

The order is the safety argument (catalogue A1, as runc and lxc-attach do it). A forked
*helper* joins the guest's cgroup and namespaces; joining a PID namespace only applies to the
helper's children, so the helper itself is never visible inside the guest. Before it forks the
command, the only process the guest can see, it opens the guest's pty, closes every descriptor
of the host (the administrator's terminal included), loads the guest's seccomp filter, drops to
the guest's capabilities and makes itself non-dumpable: the command appears in the guest with
nothing more than the guest's own root holds, and cannot be ptraced or have its descriptors
taken (pidfd_getfd) before it executes the guest's program. Errors before that travel back on
a pipe of their own and are printed by vs-exec."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import selectors
import signal
import socket
import stat
import struct
import sys
import termios
import tty
from collections.abc import Callable, Iterator, Sequence

from vstools.errors import HostError, NotFoundError, StateError
from vstools.host.cgroup import Cgroup
from vstools.host.cgrouplayout import CgroupLayout, probe_layout
from vstools.host.namespaces import become_root_of, same_user_namespace
from vstools.host.syscalls import TIOCGPTPEER, TIOCSCTTY, TIOCSPTLCK, setns
from vstools.paths import Paths
from vstools.runtime.sandbox import close_fds, confine, preload
from vstools.runtime.state import GUEST_ENV, GuestState, read_state

# Joined in this order: the mount namespace after the others, since after it the host's /proc is
# gone; then the guest's user namespace, when it has one (joining it gives up the host's powers).
NAMESPACES = ("cgroup", "ipc", "uts", "net", "pid", "mnt")
PTMX_DEVICE = (5, 2)  # /dev/pts/ptmx of a devpts instance
# Where a command's stdout and stderr go instead of ours (vs-pkg): one callable each.
Sinks = tuple[Callable[[bytes], None], Callable[[bytes], None]]


def _open_namespaces(state: GuestState) -> tuple[list[int], int]:
    """Descriptors of the guest's namespaces and of its user namespace (-1: the host's), after
    checking the PID is the guest's init before and after opening them (a PID recycled in
    between would be another process's)."""
    try:
        pidfd = os.pidfd_open(state.init_pid)
    except ProcessLookupError:
        raise StateError(
            f"guest {state.name} is not running (init {state.init_pid} is gone)"
        ) from None
    try:
        _check_init(state)
        userns = -1
        if not same_user_namespace(state.init_pid):
            userns = os.open(f"/proc/{state.init_pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        fds = [
            os.open(f"/proc/{state.init_pid}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
            for ns in NAMESPACES
        ]
        try:
            signal.pidfd_send_signal(pidfd, 0)  # still the process the pidfd was opened on
        except ProcessLookupError:
            for fd in [*fds, userns]:
                if fd >= 0:
                    os.close(fd)
            raise StateError(f"guest {state.name}: init {state.init_pid} ended meanwhile") from None
        return fds, userns
    finally:
        os.close(pidfd)


def _check_init(state: GuestState) -> None:
    try:
        with open(f"/proc/{state.init_pid}/cgroup") as handle:
            membership = handle.read()
    except FileNotFoundError:
        raise StateError(
            f"guest {state.name} is not running (init {state.init_pid} is gone)"
        ) from None
    if f":/{state.cgroup}\n" not in membership:
        raise StateError(f"guest {state.name}: pid {state.init_pid} is no longer its init")


def run_in_guest(
    paths: Paths,
    name: str,
    argv: Sequence[str],
    *,
    use_tty: bool,
    env: dict[str, str] | None = None,
    output: Sinks | None = None,
) -> int:
    """Run ``argv`` in the running guest ``name`` (vs-exec, vs-enter, vs-pkg): its exit status.
    Nothing of the guest's configuration is read: a running guest whose files broke meanwhile
    can still be entered to mend them. With ``output`` (pipes only) the command's stdout and
    stderr go to those two callables and its stdin is empty (vs-pkg reads what it prints)."""
    if not paths.guest_dir(name).is_dir():  # unknown: "not found", not "not running"
        raise NotFoundError(f"no guest named {name} on this host")
    state = read_state(paths.guest_run_dir(name))
    if state is None:
        raise StateError(f"guest {name} is not running")
    layout = probe_layout()
    if Cgroup(layout, state.cgroup).is_frozen():
        raise StateError(f"guest {name} is frozen: vs-control --name {name} --thaw first")
    sys.stdout.flush()
    return exec_in_guest(state, layout, argv, use_tty=use_tty, env=env, output=output)


def exec_in_guest(
    state: GuestState,
    layout: CgroupLayout,
    argv: Sequence[str],
    *,
    use_tty: bool,
    env: dict[str, str] | None = None,
    output: Sinks | None = None,
) -> int:
    """Run ``argv`` in the guest; relay its input and output; return its exit status."""
    if not argv:
        raise HostError("no command given")
    if output is not None and use_tty:
        raise HostError("output callbacks need pipes, not a terminal")
    ns_fds, userns_fd = _open_namespaces(state)
    cgroup = Cgroup(layout, state.cgroup)
    environment = dict(GUEST_ENV)
    if use_tty:
        environment["TERM"] = os.environ.get("TERM", "linux")
    environment.update(env or {})
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    parent_sock: socket.socket | None = None
    child_sock: socket.socket | None = None
    pipes: list[tuple[int, int]] = []
    if use_tty:
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    else:
        pipes = [os.pipe2(os.O_CLOEXEC) for _ in range(3)]
    command_ends = (pipes[0][0], pipes[1][1], pipes[2][1]) if pipes else None
    try:
        child = os.fork()
        if child == 0:  # pragma: no cover - child process
            _helper(
                cgroup,
                (ns_fds, userns_fd),
                argv,
                environment,
                report_fd=report_w,
                tty_channel=child_sock,
                pipes=command_ends,
            )
        os.close(report_w)
        report_w = -1
        if parent_sock is not None and child_sock is not None:
            child_sock.close()
            _, fds, _, _ = socket.recv_fds(parent_sock, 16, 1)
            parent_sock.close()
            code = _wait(child) if not fds else _relay_tty(fds[0], child)
        else:
            for fd in command_ends or ():
                os.close(fd)
            code = _relay_pipes(pipes[0][1], pipes[1][0], pipes[2][0], child, output)
        message = _read_report(report_r)
        if message:
            sys.stderr.write(message)
            sys.stderr.flush()
        return code
    finally:
        for fd in [*ns_fds, userns_fd, report_r, report_w]:
            if fd >= 0:
                os.close(fd)


def _read_report(fd: int) -> str:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def open_guest_pty() -> tuple[int, int]:
    """A new pty of the devpts mounted at /dev/pts in this mount namespace (the guest's):
    its master and slave. The master is opened at devpts's own ptmx, never through the
    guest's /dev/ptmx (a name the guest may point elsewhere), and checked to be a ptmx device;
    the slave is opened from the master (TIOCGPTPEER), without a path lookup at all."""
    flags = os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    master = os.open("/dev/pts/ptmx", flags)
    try:
        info = os.fstat(master)
        if (
            not stat.S_ISCHR(info.st_mode)
            or (
                os.major(info.st_rdev),
                os.minor(info.st_rdev),
            )
            != PTMX_DEVICE
        ):
            raise HostError("the guest's /dev/pts/ptmx is not a pty multiplexer")
        os.set_blocking(master, True)
        fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
        slave = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except BaseException:
        os.close(master)
        raise
    return master, int(slave)


def _helper(
    cgroup: Cgroup,
    namespaces: tuple[list[int], int],
    argv: Sequence[str],
    env: dict[str, str],
    *,
    report_fd: int,
    tty_channel: socket.socket | None,
    pipes: tuple[int, int, int] | None,
) -> None:  # pragma: no cover - child process
    """Join the guest, become no more than the guest's root, then fork the command (the only
    process the guest can see: joining a PID namespace applies to children)."""
    code = 127
    ns_fds, userns_fd = namespaces
    try:
        # First of all, hold nothing of the host but what joining needs: the namespaces, the
        # report pipe and the command's side of its pipes or pty channel. Holding the caller's
        # end of the stdin pipe would keep the command from ever seeing the end of its input.
        keep = [*ns_fds, userns_fd, report_fd, *(pipes or ())]
        if tty_channel is not None:
            keep.append(tty_channel.fileno())
        close_fds(keep)
        preload()  # libseccomp, while the host's files are still reachable
        # Python ignores SIGPIPE and SIGXFSZ, and ignored signals survive exec: the guest's
        # command starts with every signal at its default, as any process of the guest does.
        for signum in (signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGWINCH):
            signal.signal(signum, signal.SIG_DFL)
        cgroup.add_pid(os.getpid())
        for fd in ns_fds:
            setns(fd)
            os.close(fd)
        if userns_fd >= 0:
            become_root_of(userns_fd)
            os.close(userns_fd)
        os.chdir("/")
        if tty_channel is not None:
            master, slave = open_guest_pty()
            socket.send_fds(tty_channel, [b"pty"], [master])
            os.close(master)
            tty_channel.close()
            stdio: tuple[int, int, int] = (slave, slave, slave)
        elif pipes is not None:
            stdio = pipes
        else:
            raise HostError("neither a terminal nor pipes for the command")
        # From here on this process holds the guest's privileges and nothing of the host.
        confine(in_user_namespace=userns_fd >= 0, dumpable=False)
        close_fds([*stdio, report_fd])
        command = os.fork()
        if command == 0:
            _command(argv, env, stdio, tty=tty_channel is not None)
        for fd in {*stdio, report_fd}:
            os.close(fd)
        code = _wait(command)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.write(report_fd, f"vs-exec: {exc}\n".encode())
    os._exit(code)


def _command(
    argv: Sequence[str], env: dict[str, str], stdio: tuple[int, int, int], *, tty: bool
) -> None:  # pragma: no cover - child process
    """The guest's command, already confined: its terminal or pipes as stdio, then exec."""
    try:
        if tty:
            os.setsid()
            fcntl.ioctl(stdio[0], TIOCSCTTY)
        for target, fd in enumerate(stdio):
            os.dup2(fd, target)
            # dup2 onto itself is a no-op that leaves close-on-exec set: clear it, or the
            # command would start without that descriptor.
            os.set_inheritable(target, True)
        close_fds([0, 1, 2])
        os.execvpe(argv[0], list(argv), env)  # noqa: S606 - the guest's own program, inside it
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.write(2, f"vs-exec: {argv[0]}: {exc}\n".encode())
    os._exit(127)


def _wait(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


def _relay_pipes(
    stdin_w: int, stdout_r: int, stderr_r: int, child: int, output: Sinks | None = None
) -> int:
    """Copy our stdin to the command and its output to ours (or to ``output``, with an empty
    stdin) until it has closed both."""
    selector = selectors.DefaultSelector()
    sinks: dict[int, Callable[[bytes], None]]
    if output is None:
        sinks = {
            stdout_r: functools.partial(_write_all, sys.stdout.fileno()),
            stderr_r: functools.partial(_write_all, sys.stderr.fileno()),
        }
    else:
        sinks = {stdout_r: output[0], stderr_r: output[1]}
    sources = dict(sinks)
    for fd in sources:
        selector.register(fd, selectors.EVENT_READ)
    our_stdin = sys.stdin.fileno() if not sys.stdin.closed and output is None else -1
    if our_stdin >= 0:
        try:
            selector.register(our_stdin, selectors.EVENT_READ)
        except (ValueError, PermissionError):  # /dev/null and regular files cannot be polled
            _copy_all(our_stdin, stdin_w)
            os.close(stdin_w)
            stdin_w = -1
            our_stdin = -1
    else:
        os.close(stdin_w)
        stdin_w = -1
    while sources:
        for key, _ in selector.select():
            fd = int(key.fd)
            data = _read(fd)
            if fd == our_stdin:
                if not data:
                    selector.unregister(fd)
                    os.close(stdin_w)
                    stdin_w = -1
                else:
                    with contextlib.suppress(BrokenPipeError):
                        _write_all(stdin_w, data)
                continue
            if not data:
                selector.unregister(fd)
                os.close(fd)
                del sources[fd]
            else:
                sources[fd](data)
    if stdin_w >= 0:
        os.close(stdin_w)
    selector.close()
    return _wait(child)


def _relay_tty(master: int, child: int) -> int:
    """Relay between our terminal (raw mode) and the command's pty until the command ends."""
    stdin = sys.stdin.fileno()
    interactive = os.isatty(stdin)
    with _raw(stdin) if interactive else contextlib.nullcontext():
        if interactive:
            _copy_window_size(stdin, master)
            signal.signal(signal.SIGWINCH, lambda *_: _copy_window_size(stdin, master))
        selector = selectors.DefaultSelector()
        selector.register(master, selectors.EVENT_READ)
        with contextlib.suppress(ValueError, PermissionError):
            selector.register(stdin, selectors.EVENT_READ)
        open_master = True
        while open_master:
            for key, _ in selector.select():
                data = _read(int(key.fd))
                if key.fd == master:
                    if not data:
                        open_master = False
                        break
                    _write_all(sys.stdout.fileno(), data)
                elif not data:
                    selector.unregister(stdin)
                    _write_all(master, b"\x04")  # end of input, as a terminal sends it
                else:
                    _write_all(master, data)
        selector.close()
    os.close(master)
    return _wait(child)


@contextlib.contextmanager
def _raw(fd: int) -> Iterator[None]:
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _copy_window_size(source: int, target: int) -> None:
    with contextlib.suppress(OSError):
        size = fcntl.ioctl(source, termios.TIOCGWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
        fcntl.ioctl(target, termios.TIOCSWINSZ, size)


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO on a pty master once every slave is closed
        return b""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _copy_all(source: int, target: int) -> None:
    while data := _read(source):
        with contextlib.suppress(BrokenPipeError):
            _write_all(target, data)
