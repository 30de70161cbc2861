"""The supervisor: one process per running guest, outside it. It holds the guest's lock for as
long as the guest runs, creates its cgroup with the limits, starts the guest's first process in
new mount, PID, UTS, IPC and network namespaces, logs its console, reaps it, and on a stop
request sends init its shutdown signal, then after a timeout kills the whole cgroup.

`vs-guest@NAME.service` runs it in the foreground; without systemd `vs-control --start`
detaches it (double fork). Either way the caller learns "running" or why not through
``on_ready``.

What only one start may do happens after the lock is taken (``prepare``: clean what a killed
supervisor left, mount the root): a start that loses the race for the lock changes nothing and
leaves the running guest alone (catalogue A4). A stop request that arrives during the start is
kept and carried out as soon as the guest runs. The supervisor protects itself from the OOM
killer (its guest's processes do not inherit that), and its console reading is rate-limited so
a guest flooding its console costs the host almost nothing outside the guest's cgroup."""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable
from typing import BinaryIO

from vstools.config.guest import USERNS_SIZE
from vstools.errors import ExitCode, HostError, StateError
from vstools.host.cgroup import Cgroup
from vstools.host.cgrouplayout import CgroupLayout, host_cpu_count
from vstools.host.fsutil import atomic_write, take_lock
from vstools.host.journal import log
from vstools.host.namespaces import make_user_namespace
from vstools.host.syscalls import (
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWUTS,
    prctl,
    unshare,
)
from vstools.runtime.sandbox import SandboxSpec, preload, setup_and_exec
from vstools.runtime.state import (
    CONSOLE_LOG,
    LOCK_FILE,
    STATE_FILE,
    GuestPlan,
    GuestState,
    Phase,
    process_start_time,
)

PR_SET_CHILD_SUBREAPER = 36
CONSOLE_LOG_MAX_BYTES = 1 << 20
# The console is read at most this fast: beyond, the guest's writes wait (a pty buffers 4 KiB
# or so), as on a serial console, and the supervisor spends nearly no CPU on a flood.
CONSOLE_BYTES_PER_S = 64 << 10
CONSOLE_CHUNK = 4 << 10
OOM_SCORE_ADJ_MIN = -1000
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Supervisor:
    """Runs one guest until it stops. ``run()`` returns the exit status for the service."""

    def __init__(
        self,
        plan: GuestPlan,
        layout: CgroupLayout,
        *,
        on_ready: Callable[[str], None] | None = None,
        before_go: Callable[[int], None] | None = None,
        after_stop: Callable[[bool], None] | None = None,
        prepare: Callable[[], tuple[GuestPlan, str]] | None = None,
    ) -> None:
        self.plan = plan
        self.layout = layout
        self.on_ready = on_ready or (lambda _: None)
        self.before_go = before_go or (lambda _: None)
        # Run at the end once prepare ran; told whether before_go had succeeded.
        self.after_stop = after_stop or (lambda attached: None)
        # Run once the lock is held; returns the plan (built again once the root is there)
        # and the root it mounted ("" for none).
        self.prepare = prepare or (lambda: (plan, ""))
        self.attached = False  # before_go succeeded: after_stop undoes it at the end
        self.prepared = False  # prepare ran: after_stop runs at the end, whatever happened
        self.cgroup = Cgroup(layout, plan.cgroup_path)
        self.init_pid = 0
        self.init_start = 0
        self.root_mounted = ""
        self.stop_requested = False
        self.stop_sent = False
        self.stop_deadline: float | None = None
        self.lock_fd = -1
        self.console_master = -1
        self.console_budget = float(CONSOLE_BYTES_PER_S)
        self.console_refill_at = time.monotonic()
        self.console_paused_until: float | None = None
        self.console_master_closed = False
        self.cgroup_made = False  # what this supervisor made, and so undoes
        self.state_written = False

    # -- start ---------------------------------------------------------------------------------

    def run(self) -> int:
        """Start the guest and supervise it until it stops; returns the exit status for the service.
        A start that fails is rolled back, then reported to ``on_ready``, and raised."""
        # A stop request from now on is kept (Python's default for SIGTERM would kill this
        # process mid-start and orphan what it made); it is carried out once the guest runs.
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._on_stop_signal)
        try:
            self._take_lock()
        except BaseException as exc:
            self.on_ready(_failed(exc))  # the lock's holder runs the guest: leave it be
            raise
        try:
            _protect_from_oom()
            # prepare reads what a killed supervisor left (its state.json) before it is replaced.
            self.plan, self.root_mounted = self.prepare()
            self.prepared = True
            self._write_state(Phase.STARTING)
            self._start()
        except BaseException as exc:
            # Rolled back before the caller hears of it: once `vs-control --start` returns,
            # nothing of the failed start is left (state, cgroup, link, firewall).
            try:
                self._cleanup()
            finally:
                self.on_ready(_failed(exc))
            raise
        self.on_ready("running")
        try:
            return self._loop()
        finally:
            self._cleanup()

    def _take_lock(self) -> None:
        self.plan.run_dir.mkdir(parents=True, exist_ok=True)
        fd = take_lock(self.plan.run_dir / LOCK_FILE)
        if fd is None:
            raise StateError(f"guest {self.plan.name} is already running")
        self.lock_fd = fd

    def _write_state(self, phase: Phase) -> None:
        state = GuestState(
            self.plan.name,
            os.getpid(),
            process_start_time(os.getpid()),
            self.init_pid,
            time.time(),
            self.plan.cgroup_path,
            phase=phase,
            init_start=self.init_start,
            stop_signal=int(self.plan.stop_signal),
            stop_timeout_s=self.plan.stop_timeout_s,
            root_mounted=self.root_mounted,
        )
        # Not fsynced: runtime state that a reboot makes void (RUN_DIR is /run, a tmpfs, on a
        # host; fsyncs cost ~7 ms each on a disk, twice per start). The rename alone keeps a
        # reader from ever seeing half a file, and a state.json that does not parse is
        # reported as corrupt, never trusted.
        atomic_write(self.plan.run_dir / STATE_FILE, state.to_json(), durable=False)
        self.state_written = True

    def _start(self) -> None:
        plan = self.plan
        self.cgroup_made = True  # create() undoes its own directories if it fails
        self.cgroup.create()
        self.cgroup.set_memory_limit(plan.rss_mb << 20)
        self.cgroup.set_pids_limit(plan.proc_limit)
        self.cgroup.set_cpu_limit(plan.cpu_limit, host_cpu_count())
        log.info("step: cgroup %s created with the guest's limits", plan.cgroup_path)
        console_parent, console_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        prctl(PR_SET_CHILD_SUBREAPER, 1)  # adopt the guest's init when its parent exits
        report_r, report_w = os.pipe2(os.O_CLOEXEC)
        go_r, go_w = os.pipe2(os.O_CLOEXEC)
        userns_fd = -1
        if plan.userns_base:
            userns_fd = make_user_namespace(plan.userns_base, USERNS_SIZE)
            log.info(
                "step: user namespace with ids 0-%d mapped to %d-%d",
                USERNS_SIZE - 1,
                plan.userns_base,
                plan.userns_base + USERNS_SIZE - 1,
            )
        spec = SandboxSpec(
            rootfs=plan.rootfs,
            hostname=plan.hostname,
            tmpfs_mb=plan.tmpfs_mb,
            argv=plan.init,
            env=plan.env,
            no_new_privs=plan.no_new_privs,
            userns_fd=userns_fd,
            id_base=plan.userns_base,
        )
        try:
            first = os.fork()
            if first == 0:  # pragma: no cover - runs in the child, reported through the pipe
                console_parent.close()
                _first_child(spec, console_child, report_w, go_r, (report_r, go_w))
        finally:
            if userns_fd >= 0:
                os.close(userns_fd)  # the guest's first process holds its own copy
        os.close(report_w)
        os.close(go_r)
        console_child.close()
        try:
            self._wait_first_child(first)
            self.init_pid = int(_read_line(report_r).removeprefix("pid "))
            self.init_start = process_start_time(self.init_pid)
            self.cgroup.add_pid(self.init_pid)
            self.before_go(self.init_pid)
            self.attached = True
            os.write(go_w, b"go")
            os.close(go_w)
            go_w = -1
            _, fds, _, _ = socket.recv_fds(console_parent, 16, 1)
            if fds:
                self.console_master = fds[0]
                os.set_blocking(self.console_master, False)
            outcome = _read_all(report_r)
            if outcome:
                raise HostError(f"guest {plan.name}: {outcome.removeprefix('error: ').strip()}")
        except BaseException:
            if go_w >= 0:
                os.close(go_w)
            if self.init_pid:
                with contextlib.suppress(ChildProcessError):
                    self.cgroup.kill()
                    os.waitpid(self.init_pid, 0)
            raise
        finally:
            os.close(report_r)
            console_parent.close()
        self._write_state(Phase.RUNNING)
        log.info("step: guest %s running, init pid %d", plan.name, self.init_pid)

    @staticmethod
    def _wait_first_child(pid: int) -> None:
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise HostError(f"could not create the guest's namespaces (status {status})")

    # -- run -----------------------------------------------------------------------------------

    def _loop(self) -> int:
        wake_r, wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        if self.stop_requested:
            self._send_stop()  # asked for while the guest was starting
        selector = selectors.DefaultSelector()
        selector.register(wake_r, selectors.EVENT_READ)
        if self.console_master >= 0:
            selector.register(self.console_master, selectors.EVENT_READ)
        console = open(self.plan.run_dir / CONSOLE_LOG, "ab")  # noqa: SIM115 - closed below
        try:
            while True:
                status = self._reap()
                if status is not None:
                    log.info("step: guest %s init ended (%s)", self.plan.name, status)
                    return 0
                if self.stop_deadline is not None and time.monotonic() >= self.stop_deadline:
                    log.info(
                        "step: guest %s did not stop in %.0f s: killing its cgroup",
                        self.plan.name,
                        self.plan.stop_timeout_s,
                    )
                    self.stop_deadline = None
                    self.cgroup.kill()
                self._resume_console(selector)
                for key, _ in selector.select(self._timeout()):
                    if key.fd == wake_r:
                        with contextlib.suppress(BlockingIOError):
                            os.read(wake_r, 4096)
                    else:
                        self._copy_console(console, selector)
        finally:
            signal.set_wakeup_fd(-1)
            console.close()
            selector.close()
            os.close(wake_r)
            os.close(wake_w)

    def _timeout(self) -> float | None:
        """Until the stop deadline or the console's pause ends, whichever is first."""
        ends = [t for t in (self.stop_deadline, self.console_paused_until) if t is not None]
        return None if not ends else max(0.0, min(ends) - time.monotonic())

    def _on_stop_signal(self, signum: int, frame: object) -> None:
        self.stop_requested = True
        if self.attached and self.init_pid:
            self._send_stop()  # else _loop sends it once the guest runs

    def _send_stop(self) -> None:
        if self.stop_sent:
            return
        self.stop_sent = True
        with contextlib.suppress(Exception):
            if self.cgroup.is_frozen():
                self.cgroup.thaw()  # a frozen init cannot handle its shutdown signal
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.init_pid, self.plan.stop_signal)
        self.stop_deadline = time.monotonic() + self.plan.stop_timeout_s

    def _reap(self) -> str | None:
        """Reap every finished child; the guest's end when it is init that finished."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return "no child left"
            if pid == 0:
                return None
            if pid == self.init_pid:
                if os.WIFSIGNALED(status):
                    return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
                return f"exit status {os.waitstatus_to_exitcode(status)}"

    def _copy_console(self, console: BinaryIO, selector: selectors.BaseSelector) -> None:
        now = time.monotonic()
        self.console_budget = min(
            float(CONSOLE_BYTES_PER_S),
            self.console_budget + (now - self.console_refill_at) * CONSOLE_BYTES_PER_S,
        )
        self.console_refill_at = now
        try:
            data = os.read(self.console_master, max(1, min(65536, int(self.console_budget))))
        except BlockingIOError:
            return
        except OSError:  # EIO: every writer of the console is gone
            data = b""
        if not data:
            selector.unregister(self.console_master)
            self.console_master_closed = True
            return
        self.console_budget -= len(data)
        if self.console_budget < CONSOLE_CHUNK:
            # Out of budget: stop reading until a chunk's worth has refilled (about 16 times a
            # second at most); the guest's writes wait meanwhile.
            selector.unregister(self.console_master)
            missing = CONSOLE_CHUNK - self.console_budget
            self.console_paused_until = now + missing / CONSOLE_BYTES_PER_S
        if console.tell() > CONSOLE_LOG_MAX_BYTES:  # keep the newest output, bounded
            console.truncate(0)
            console.seek(0)
        console.write(data)
        console.flush()

    def _resume_console(self, selector: selectors.BaseSelector) -> None:
        paused = self.console_paused_until
        if paused is not None and time.monotonic() >= paused:
            self.console_paused_until = None
            if not self.console_master_closed:
                selector.register(self.console_master, selectors.EVENT_READ)

    # -- end -----------------------------------------------------------------------------------

    def _cleanup(self) -> None:
        """Leave nothing behind: processes, cgroup, network, state; the lock goes with the
        process (last, so nobody sees the guest stopped before it is cleaned up)."""
        if self.cgroup_made:
            with contextlib.suppress(Exception):
                if self.cgroup.exists():
                    self.cgroup.kill()
                    self.cgroup.destroy()
        if self.prepared:
            attached, self.prepared, self.attached = self.attached, False, False
            try:
                self.after_stop(attached)
            except Exception as exc:  # the rest of the cleanup still runs
                log.error(
                    "guest %s: network or storage not fully released after the stop: %s",
                    self.plan.name,
                    exc,
                )
        if self.console_master >= 0:
            with contextlib.suppress(OSError):
                os.close(self.console_master)
            self.console_master = -1
        if self.state_written:
            with contextlib.suppress(FileNotFoundError):
                (self.plan.run_dir / STATE_FILE).unlink()
        if self.lock_fd >= 0:
            os.close(self.lock_fd)
            self.lock_fd = -1


def _first_child(
    spec: SandboxSpec, console: socket.socket, report_w: int, go_r: int, close: tuple[int, ...]
) -> None:  # pragma: no cover - child process
    """The intermediate child: new namespaces, then fork the guest's init (PID 1 of the new PID
    namespace) and exit, so init is adopted by the supervisor (a child subreaper)."""
    try:
        for fd in close:
            os.close(fd)
        # Nothing of the supervisor's own handling, or its protection from the OOM killer,
        # reaches the guest.
        for signum in (signal.SIGCHLD, *STOP_SIGNALS):
            signal.signal(signum, signal.SIG_DFL)
        _set_oom_score_adj(_OOM_SCORE_ADJ_BEFORE[0])
        unshare(CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET)
        init = os.fork()
        if init == 0:
            _init_child(spec, console, report_w, go_r)
        os.write(report_w, f"pid {init}\n".encode())
        os._exit(0)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.write(report_w, f"error: {exc}\n".encode())
        os._exit(1)


def _init_child(
    spec: SandboxSpec, console: socket.socket, report_w: int, go_r: int
) -> None:  # pragma: no cover - child process
    try:
        # libseccomp's binding is loaded while the supervisor moves this process into the
        # guest's cgroup (a v1 attach waits for an RCU grace period): the two overlap.
        preload()
        if os.read(go_r, 16) != b"go":  # the supervisor died or gave up before the go
            os._exit(1)
        os.close(go_r)
        setup_and_exec(spec, console=console, report_fd=report_w)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.write(report_w, f"error: {exc}\n".encode())
    os._exit(127)


def _failed(exc: BaseException) -> str:
    """The ready line of a start that failed: ``failed CODE: why`` (the error's exit code)."""
    return f"failed {int(getattr(exc, 'exit_code', ExitCode.HOST))}: {exc}"


_OOM_SCORE_ADJ_BEFORE = [0]  # what this process had: what the guest gets back


def _protect_from_oom() -> None:
    """Keep the OOM killer away from the supervisor (a guest that loses its supervisor loses
    its stop, its console and its cleanup). Lowering the score needs CAP_SYS_RESOURCE: where
    the host withholds it (some sandboxes), the supervisor goes on unprotected and says so."""
    with open("/proc/self/oom_score_adj") as handle:
        _OOM_SCORE_ADJ_BEFORE[0] = int(handle.read())
    try:
        _set_oom_score_adj(OOM_SCORE_ADJ_MIN)
    except PermissionError:
        log.warning(
            "warning: cannot protect the supervisor from the OOM killer (no CAP_SYS_RESOURCE)"
        )


def _set_oom_score_adj(value: int) -> None:
    with open("/proc/self/oom_score_adj", "w") as handle:
        handle.write(str(value))


def _read_line(fd: int) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 1)
        if not chunk:
            break
        data += chunk
    text = data.decode(errors="replace").strip()
    if text.startswith("error: ") or not text.startswith("pid "):
        raise HostError(text.removeprefix("error: ") or "the guest's first process died")
    return text


def _read_all(fd: int) -> str:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")
