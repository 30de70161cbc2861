"""The host-side primitives: plan/undo, atomic writes, locks, the subprocess door, the syslog
journal and guest-name validation (D15)."""

from __future__ import annotations

import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vstools.errors import (
    CommandError,
    ExitCode,
    HostError,
    InvalidName,
    RollbackError,
    StateError,
)
from vstools.host import fsutil, journal
from vstools.host.run import cmdline, run
from vstools.names import check_guest_name, hostname_problem
from vstools.paths import Paths, resolve_paths
from vstools.plan import Step, apply_steps

# ---- plan ------------------------------------------------------------------------------------


def _steps(log: list[str], fail_at: int | None = None, undo_fails: int | None = None) -> list[Step]:
    def make(index: int) -> Step:
        def apply() -> None:
            if index == fail_at:
                raise OSError(28, "No space left on device")
            log.append(f"do {index}")

        def undo() -> None:
            if index == undo_fails:
                raise OSError(16, "Device or resource busy")
            log.append(f"undo {index}")

        return Step(f"step {index}", apply, undo)

    return [make(i) for i in range(4)]


def test_plan_applies_in_order() -> None:
    log: list[str] = []
    outcome = apply_steps(_steps(log))
    assert log == ["do 0", "do 1", "do 2", "do 3"]
    assert outcome.done == ["step 0", "step 1", "step 2", "step 3"]


@pytest.mark.parametrize("fail_at", [0, 1, 2, 3])
def test_plan_failure_undoes_what_was_done_newest_first(fail_at: int) -> None:
    log: list[str] = []
    with pytest.raises(HostError) as caught:
        apply_steps(_steps(log, fail_at=fail_at))
    expected = [f"do {i}" for i in range(fail_at)] + [f"undo {i}" for i in reversed(range(fail_at))]
    assert log == expected
    message = str(caught.value)
    assert message.startswith(f"step {fail_at}: [Errno 28] No space left on device")
    assert ("nothing to roll back" in message) == (fail_at == 0)
    assert caught.value.exit_code is ExitCode.HOST


def test_plan_failed_undo_is_a_rollback_error() -> None:
    log: list[str] = []
    with pytest.raises(RollbackError) as caught:
        apply_steps(_steps(log, fail_at=3, undo_fails=1))
    assert log == ["do 0", "do 1", "do 2", "undo 2", "undo 0"]  # every undo is attempted
    assert "ROLLBACK FAILED: step 1" in str(caught.value)
    assert caught.value.exit_code is ExitCode.ROLLBACK


def test_plan_dry_run_changes_nothing() -> None:
    log: list[str] = []
    outcome = apply_steps(_steps(log), dry_run=True)
    assert log == [] and outcome.done == []


# ---- atomic writes and locks -----------------------------------------------------------------


def test_atomic_write_replaces_whole_file_with_mode(tmp_path: Path) -> None:
    target = tmp_path / "guest.conf"
    target.write_text("old\n")
    fsutil.atomic_write(target, "new\n", mode=0o600)
    assert target.read_text() == "new\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["guest.conf"]


def test_atomic_write_failure_keeps_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "guest.conf"
    target.write_text("old\n")

    def broken_replace(src: str, dst: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(fsutil.os, "replace", broken_replace)
    with pytest.raises(OSError, match="Input/output"):
        fsutil.atomic_write(target, "new\n")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["guest.conf"]


def test_swap_write_replaces_the_file_and_keeps_the_previous_inode_for_next_time(
    tmp_path: Path,
) -> None:
    target = tmp_path / "web.json"
    fsutil.swap_write(target, "first\n", mode=0o640)  # no file yet: renamed into place
    assert target.read_text() == "first\n"
    swap = Path(fsutil.swap_file_of(target))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".web.json.swap", "web.json"]
    assert swap.read_text() == ""  # made for the next call
    first_inode = target.stat().st_ino
    fsutil.swap_write(target, "second, longer\n")
    assert (target.read_text(), swap.read_text()) == ("second, longer\n", "first\n")
    assert stat.S_IMODE(target.stat().st_mode) == stat.S_IMODE(swap.stat().st_mode) == 0o640
    assert swap.stat().st_ino == first_inode
    fsutil.swap_write(target, "3\n")  # written into the first inode, then swapped back
    assert (target.read_text(), target.stat().st_ino) == ("3\n", first_inode)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".web.json.swap", "web.json"]


def test_read_bytes_reads_a_proc_file_to_its_end() -> None:
    # /proc/self/maps comes a page at a time: a single read would stop early.
    assert fsutil.read_bytes("/proc/self/maps").count(b"\n") > 5
    assert fsutil.read_bytes("/proc/self/stat").startswith(str(os.getpid()).encode())


def test_swap_write_of_the_same_length_leaves_exactly_the_new_bytes(tmp_path: Path) -> None:
    target = tmp_path / "web.json"
    for text in ("aaaa\n", "bbbbbbbb\n", "cccc\n", "dddd\n", "eeeeeeee\n", "ff\n"):
        fsutil.swap_write(target, text)
        assert target.read_text() == text


def test_read_record_reads_a_regular_file_past_its_buffer(tmp_path: Path) -> None:
    big = tmp_path / "big"
    data = os.urandom(200_000)  # three buffers and a part
    big.write_bytes(data)
    assert fsutil.read_record(big) == data
    assert fsutil.read_record("/proc/self/stat").startswith(str(os.getpid()).encode())


def test_pread_record_of_a_kept_descriptor_reads_fresh_values() -> None:
    # /proc/TID/schedstat: the nanoseconds this thread ran, printed anew at each read from 0.
    fd = os.open(f"/proc/self/task/{threading.get_native_id()}/schedstat", os.O_RDONLY)
    try:
        before = int(fsutil.pread_record(fd).split()[0])
        deadline = time.thread_time() + 0.05
        while time.thread_time() < deadline:
            pass
        after = int(fsutil.pread_record(fd).split()[0])
    finally:
        os.close(fd)
    assert after - before >= 40_000_000


def test_lock_refuses_a_second_holder_and_names_the_first(tmp_path: Path) -> None:
    lock = tmp_path / "locks" / "web.lock"
    with fsutil.locked(lock, what="vs-control --start web"):
        with pytest.raises(StateError) as caught, fsutil.locked(lock, what="vs-limit web"):
            pass
        assert f"pid {os.getpid()}: vs-control --start web" in str(caught.value)
    with fsutil.locked(lock, what="again"):  # released when the block ends
        pass


def test_lock_waits_up_to_its_timeout_with_the_given_clock(tmp_path: Path) -> None:
    now = [0.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    lock = tmp_path / "x.lock"
    with (
        fsutil.locked(lock, what="first"),
        pytest.raises(StateError),
        fsutil.locked(lock, what="second", timeout_s=1.0, clock=lambda: now[0], sleep=sleep),
    ):
        pass
    # on the fake clock: 1 ms, doubled each time up to 50 ms, until the second is over
    assert sleeps[:7] == [0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.05]
    assert set(sleeps[6:]) == {0.05} and 1.0 <= sum(sleeps) < 1.05


# ---- the subprocess door ---------------------------------------------------------------------


def test_run_returns_output_and_logs_the_command_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="vstools.run")
    result = run(["sh", "-c", "echo out; echo err >&2", "x y"])
    assert (result.stdout, result.stderr, result.returncode) == ("out\n", "err\n", 0)
    assert "+ sh -c 'echo out; echo err >&2' 'x y'" in caplog.text


def test_run_failure_carries_status_and_stderr() -> None:
    with pytest.raises(CommandError) as caught:
        run(["sh", "-c", "echo 'nft: syntax error' >&2; exit 3"])
    assert caught.value.returncode == 3
    assert "nft: syntax error" in str(caught.value)


def test_run_missing_program_and_stdin_is_not_inherited() -> None:
    with pytest.raises(HostError, match="command not found"):
        run(["vst-no-such-program"])
    assert run(["cat"], timeout_s=5).stdout == ""  # stdin is /dev/null: cat ends at once


def test_cmdline_quotes_like_a_shell() -> None:
    assert cmdline(["nft", "-f", "/tmp/a b", "$(x)"]) == "nft -f '/tmp/a b' '$(x)'"


# ---- the syslog journal ----------------------------------------------------------------------


@pytest.fixture
def syslog_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "log")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(2)
    yield path, server
    server.close()
    journal.log.handlers.clear()


def _received(server: socket.socket, count: int) -> list[str]:
    return [server.recv(4096).decode().rstrip("\0") for _ in range(count)]


def test_journal_writes_begin_steps_and_success_to_syslog(
    syslog_socket: tuple[str, socket.socket],
) -> None:
    path, server = syslog_socket
    assert journal.setup_logging(syslog_socket=path) is None
    with journal.operation("vs-control --start web"):
        apply_steps([Step("mount web", lambda: None)])
    pid = os.getpid()
    # <30> = facility daemon (3) * 8 + severity info (6)
    assert _received(server, 3) == [
        f"<30>vs-tools[{pid}]: BEGIN vs-control --start web",
        f"<30>vs-tools[{pid}]: step: mount web",
        f"<30>vs-tools[{pid}]: SUCCESS vs-control --start web",
    ]


def test_journal_writes_aborted_with_the_reason(syslog_socket: tuple[str, socket.socket]) -> None:
    path, server = syslog_socket
    journal.setup_logging(syslog_socket=path)
    with pytest.raises(HostError), journal.operation("vs-limit web"):
        raise HostError("memory.limit_in_bytes: Device or resource busy")
    lines = _received(server, 2)
    assert lines[1].endswith(
        "ABORTED: vs-limit web: memory.limit_in_bytes: Device or resource busy"
    )


def test_a_deferred_journal_connects_at_its_first_record_or_before_a_fork(
    syslog_socket: tuple[str, socket.socket],
) -> None:
    """A command that only shows never reaches syslog; one that changes journals as before,
    and a child forked before any record inherits the socket made before its fork."""
    path, server = syslog_socket
    assert journal.setup_logging(syslog_socket=path, deferred=True) is None
    deferred = journal.log.handlers[-1]
    assert isinstance(deferred, journal._DeferredSyslog) and deferred.made is None
    child = os.fork()
    if child == 0:
        os._exit(0)
    os.waitpid(child, 0)
    assert deferred.made is not None
    with journal.operation("vs-control --start web"):
        pass
    pid = os.getpid()
    assert _received(server, 2) == [
        f"<30>vs-tools[{pid}]: BEGIN vs-control --start web",
        f"<30>vs-tools[{pid}]: SUCCESS vs-control --start web",
    ]


def test_journal_says_why_syslog_is_unavailable(tmp_path: Path) -> None:
    reason = journal.setup_logging(syslog_socket=str(tmp_path / "missing"))
    assert reason is not None and "unavailable" in reason
    journal.log.handlers.clear()


# ---- names and paths (D15) -------------------------------------------------------------------

BAD_NAMES = [
    "..",
    ".",
    "-rf",
    "a/b",
    "x;id",
    "",
    "a" * 64,
    "web-",
    "1web",
    "wéb",
    "web\n",
    "$(id)",
    "a b",
    "--all",
    "web.1",
    "ＷＥＢ",
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_d15_bad_names_are_refused_before_any_path_is_built(name: str, tmp_path: Path) -> None:
    paths = Paths(tmp_path, tmp_path, tmp_path, tmp_path, tmp_path)
    with pytest.raises(InvalidName):
        check_guest_name(name)
    for build in (paths.guest_dir, paths.guest_root, paths.guest_run_dir):
        with pytest.raises(InvalidName):
            build(name)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["a", "web", "web-1", "W3b", "a" * 63, "fwd", "drop", "ip"])
def test_good_names(name: str) -> None:
    assert check_guest_name(name) == name


def test_hostnames() -> None:
    assert hostname_problem("mail.example.org") is None
    assert hostname_problem("example.org.") is None
    assert hostname_problem("198.51.100.1") is not None  # all-digit last label: an address
    assert hostname_problem("a..b") is not None


def test_paths_environment_beats_vs_tools_conf_beats_defaults() -> None:
    from vstools.config.settings import Settings

    settings = Settings.parse("vs-tools.conf", "ROOT_DIR=/srv/guests\nRUN_DIR=/srv/run\n")
    paths = resolve_paths({"VS_RUN_DIR": "/tmp/vst-run"}, settings)
    assert str(paths.root_dir) == "/srv/guests"  # from vs-tools.conf
    assert str(paths.run_dir) == "/tmp/vst-run"  # the environment wins
    assert str(paths.guests_conf_dir) == "/etc/vservers"  # default
