"""The vs-monitor daemon, run as systemd would run it, against a fake host (a cgroup tree laid
out like /sys/fs/cgroup in a temporary directory, guests that look running) and a real SMTP
server on loopback: the fault-injection half of the catalogue, M1, M3, M4, M5, M6, M8. The
values are written by the test, so every mail is caused and counted exactly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.fakehost import FakeHost, SmtpSink
from vstools.host.cgrouplayout import probe_layout
from vstools.host.hostconfig import load_settings
from vstools.monitor.watch import Monitor

BIN = Path(sys.executable).parent
POLICY = (
    "MONITOR_MAILTO=admin@example.org\nMONITOR_POOLING=1\nRSS_THRESHOLD=90\n"
    "MONITOR_HYSTERESIS=5\nTMPFS_THRESHOLD=0\nDISK_THRESHOLD=0\nPROC_THRESHOLD=0\n"
    "MONITOR_SOCKETS=no\nMONITOR_RSS_HITS=no\nMONITOR_PROC_HITS=no\n"
)


class Daemon:
    """vs-monitor as its unit's ExecStart runs it, with a notify socket standing in for
    systemd; stopped by its PID."""

    def __init__(self, fake: FakeHost, tmp: Path, *, watchdog_s: float | None = None) -> None:
        self.fake = fake
        self.notify_path = tmp / f"notify-{time.monotonic_ns()}"
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.listener.bind(str(self.notify_path))
        env = dict(fake.env, NOTIFY_SOCKET=str(self.notify_path))
        if watchdog_s:
            env["WATCHDOG_USEC"] = str(int(watchdog_s * 1e6))
        self.log = tmp / f"daemon-{time.monotonic_ns()}.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [str(BIN / "vs-monitor"), "--all", "-v"], env=env, stdout=log, stderr=log
            )

    def messages(self, timeout_s: float) -> list[str]:
        """Notify datagrams received within ``timeout_s``."""
        got = []
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            self.listener.settimeout(left)
            try:
                got.append(self.listener.recv(4096).decode())
            except TimeoutError:
                break
        return got

    def wait_ready(self) -> None:
        self.listener.settimeout(20)
        assert "READY=1" in self.listener.recv(4096).decode(), self.log.read_text()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.listener.close()
        return int(self.proc.returncode)


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    sink.start()
    yield sink
    sink.stop()


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeHost]:
    host = FakeHost(tmp_path / "host")
    yield host
    host.close()


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.stop(signal.SIGKILL)


def _start(daemons: list[Daemon], fake: FakeHost, tmp: Path, **kw: float) -> Daemon:
    daemon = Daemon(fake, tmp, **kw)  # type: ignore[arg-type]
    daemons.append(daemon)
    daemon.wait_ready()
    return daemon


def _wait_state(fake: FakeHost, name: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while fake.state_of(name) is None or fake.state_of(name)["figures"] is None:  # type: ignore[index]
        assert time.monotonic() < deadline, f"no figures for {name}"
        time.sleep(0.1)


def _wait_seen(fake: FakeHost, name: str, rss_mb: float, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        state = fake.state_of(name)
        if state and state["figures"] and round(state["figures"]["rss_mb"]) == rss_mb:
            return
        assert time.monotonic() < deadline, f"{name}: the monitor never saw {rss_mb} MB"
        time.sleep(0.05)


def test_m3_one_mail_per_incident_reminders_and_one_recovery(
    fake: FakeHost, smtp: SmtpSink, daemons: list[Daemon], tmp_path: Path
) -> None:
    fake.settings(f"SMTP_HOST=127.0.0.1\nSMTP_PORT={smtp.port}\n")
    fake.define("web", POLICY + "MONITOR_REPEAT=2\n")
    fake.start("web")
    _start(daemons, fake, tmp_path)
    _wait_state(fake, "web")
    fake.rss_pct("web", 95)
    mail = smtp.wait_subject("vsh-fake:web:rss")
    assert mail.to == ["admin@example.org"]
    assert "95.0 of 100" in mail.body and "95%" in mail.body
    smtp.wait_for(lambda s: s.count("vsh-fake:web:rss still") >= 2, timeout_s=20)
    fake.rss_pct("web", 10)
    smtp.wait_subject("vsh-fake:web:rss ok")
    time.sleep(2.5)  # more than a reminder interval: nothing may follow the recovery
    subjects = smtp.subjects()
    assert subjects[0] == "vsh-fake:web:rss" and subjects[-1] == "vsh-fake:web:rss ok"
    assert subjects.count("vsh-fake:web:rss") == 1
    assert subjects.count("vsh-fake:web:rss ok") == 1
    assert set(subjects[1:-1]) == {"vsh-fake:web:rss still"}


def test_m4_a_value_flapping_around_the_threshold_does_not_storm(
    fake: FakeHost, smtp: SmtpSink, daemons: list[Daemon], tmp_path: Path
) -> None:
    fake.settings(f"SMTP_HOST=127.0.0.1\nSMTP_PORT={smtp.port}\n")
    fake.define("web", POLICY + "MONITOR_REPEAT=0\n")
    fake.start("web")
    _start(daemons, fake, tmp_path)
    _wait_state(fake, "web")
    for _ in range(4):  # up and down across the threshold, each value seen by a check
        for pct in (91, 88):
            fake.rss_pct("web", pct)
            _wait_seen(fake, "web", pct)
    assert smtp.subjects() == ["vsh-fake:web:rss"]
    fake.rss_pct("web", 84)  # below threshold minus hysteresis: it ends, once
    smtp.wait_subject("vsh-fake:web:rss ok")
    time.sleep(1.5)
    assert smtp.subjects() == ["vsh-fake:web:rss", "vsh-fake:web:rss ok"]


def test_m5_smtp_down_then_back_delivers_each_alert_once_in_order(
    fake: FakeHost, smtp: SmtpSink, daemons: list[Daemon], tmp_path: Path
) -> None:
    fake.settings(f"SMTP_HOST=127.0.0.1\nSMTP_PORT={smtp.port}\n")
    for index, name in enumerate(("a", "b"), 1):
        fake.define(name, POLICY + "MONITOR_REPEAT=0\n", index)
        fake.start(name)
    smtp.stop()
    _start(daemons, fake, tmp_path)
    _wait_state(fake, "a")
    _wait_state(fake, "b")
    expected = ["vsh-fake:a:rss", "vsh-fake:b:rss", "vsh-fake:a:rss ok", "vsh-fake:b:stopped"]
    spool = Path(fake.env["VS_STATE_DIR"]) / "monitor" / "spool"
    for count, action in enumerate(
        (
            lambda: fake.rss_pct("a", 95),
            lambda: fake.rss_pct("b", 99),
            lambda: fake.rss_pct("a", 5),
            lambda: fake.stop("b"),
        ),
        1,
    ):
        action()
        deadline = time.monotonic() + 15
        while len(list(spool.glob("*.eml"))) < count:
            assert time.monotonic() < deadline, f"alert {count} not spooled"
            time.sleep(0.1)
    assert smtp.subjects() == []
    smtp.start()
    smtp.wait_for(lambda s: len(s) >= 4, timeout_s=40)
    time.sleep(2)  # a second delivery of anything would show up by now
    assert smtp.subjects() == expected
    assert list(spool.glob("*.eml")) == []


def test_m6_a_killed_daemon_loses_no_spooled_alert_and_keeps_its_state(
    fake: FakeHost, smtp: SmtpSink, daemons: list[Daemon], tmp_path: Path
) -> None:
    fake.settings(f"SMTP_HOST=127.0.0.1\nSMTP_PORT={smtp.port}\n")
    fake.define("web", POLICY + "MONITOR_REPEAT=0\n")
    fake.define("db", POLICY + "MONITOR_REPEAT=0\n", 2)
    fake.start("web")
    fake.start("db")
    smtp.stop()
    first = _start(daemons, fake, tmp_path)
    _wait_state(fake, "web")
    _wait_state(fake, "db")
    spool = Path(fake.env["VS_STATE_DIR"]) / "monitor" / "spool"
    fake.rss_pct("web", 95)
    deadline = time.monotonic() + 15
    while len(list(spool.glob("*.eml"))) < 1:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    fake.rss_pct("db", 96)
    while len(list(spool.glob("*.eml"))) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    first.stop(signal.SIGKILL)  # no chance to flush or say goodbye
    smtp.start()
    _start(daemons, fake, tmp_path)
    smtp.wait_for(lambda s: len(s) >= 2)
    time.sleep(2.5)  # the incidents go on: the restarted daemon must not announce them again
    assert smtp.subjects() == ["vsh-fake:web:rss", "vsh-fake:db:rss"]
    fake.rss_pct("web", 5)  # it remembers the incident it did not see start: one recovery
    smtp.wait_subject("vsh-fake:web:rss ok")
    assert smtp.subjects() == ["vsh-fake:web:rss", "vsh-fake:db:rss", "vsh-fake:web:rss ok"]


def test_m1_watchdog_pings_stop_when_the_main_loop_hangs(
    fake: FakeHost, smtp: SmtpSink, daemons: list[Daemon], tmp_path: Path
) -> None:
    fake.settings(f"SMTP_HOST=127.0.0.1\nSMTP_PORT={smtp.port}\n")
    fake.define("web", POLICY)
    fake.start("web")
    daemon = _start(daemons, fake, tmp_path, watchdog_s=1.0)
    pings = [m for m in daemon.messages(3.0) if "WATCHDOG=1" in m]
    assert len(pings) >= 3  # every 0.5 s while healthy
    # A new guest whose monitor.conf cannot be read without blocking (a FIFO stands in for a
    # file on a dead NFS server): the main loop's rescan, asked for by SIGHUP, hangs on it.
    fake.define("stuck", POLICY, 2)
    conf = Path(fake.env["VS_GUESTS_CONF_DIR"]) / "stuck" / "monitor.conf"
    conf.unlink()
    import os

    os.mkfifo(conf)
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.messages(1.5)  # pings already on their way
    before = fake.state_of("web")["figures"]["time"]  # type: ignore[index]
    assert [m for m in daemon.messages(3.0) if "WATCHDOG=1" in m] == []
    assert daemon.proc.poll() is None  # hung, not dead: only the watchdog can tell
    # The checks run in their own threads and go on: a ping from one of them would have
    # hidden the hang.
    assert fake.state_of("web")["figures"]["time"] > before  # type: ignore[index]


def test_m8_one_hung_guest_check_does_not_stop_the_others(
    fake: FakeHost, smtp: SmtpSink, daemons: list[Daemon], tmp_path: Path
) -> None:
    fake.settings(f"SMTP_HOST=127.0.0.1\nSMTP_PORT={smtp.port}\n")
    fake.define("good", POLICY + "MONITOR_REPEAT=0\n")
    fake.define("bad", POLICY + "MONITOR_REPEAT=0\n", 2)
    fake.start("good")
    fake.start("bad")
    fake.hang("bad")  # its memory counter is a FIFO: the check blocks reading it
    daemon = _start(daemons, fake, tmp_path, watchdog_s=2.0)
    _wait_state(fake, "good")
    fake.rss_pct("good", 97)
    smtp.wait_subject("vsh-fake:good:rss", timeout_s=20)
    times = []
    for _ in range(3):
        times.append(fake.state_of("good")["figures"]["time"])  # type: ignore[index]
        time.sleep(1.2)
    assert times[0] < times[1] < times[2]  # good is checked every second, all along
    assert fake.state_of("bad") is None or fake.state_of("bad")["figures"] is None  # type: ignore[index]
    deadline = time.monotonic() + 20
    while "bad: check hung" not in daemon.log.read_text():
        assert time.monotonic() < deadline, daemon.log.read_text()
        time.sleep(0.2)
    assert [m for m in daemon.messages(2.0) if "WATCHDOG=1" in m]  # the daemon is healthy
    assert smtp.subjects() == ["vsh-fake:good:rss"]


def test_once_dry_run_then_once_mails_a_single_time(fake: FakeHost, smtp: SmtpSink) -> None:
    fake.settings(f"SMTP_HOST=127.0.0.1\nSMTP_PORT={smtp.port}\n")
    fake.define("web", POLICY + "MONITOR_REPEAT=0\n")
    fake.start("web")
    fake.rss_pct("web", 95)

    def once(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "vs-monitor"), "--once", *extra],
            env=fake.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    dry = once("--dry-run")
    assert (dry.returncode, dry.stdout) == (0, "vsh-fake:web:running:rss\n")
    assert "would mail: vsh-fake:web:rss: memory MB 95.0 of 100" in dry.stderr
    assert fake.state_of("web") is None and smtp.subjects() == []
    for _ in range(2):  # the second round remembers the first: no second mail
        real = once()
        assert (real.returncode, real.stdout) == (0, "vsh-fake:web:running:rss\n"), real.stderr
    assert smtp.subjects() == ["vsh-fake:web:rss"]
    assert once("--name", "nosuch").returncode == 3
    assert once("--dry-run", "--name", "web").returncode == 0
    daemon_dry = subprocess.run(
        [str(BIN / "vs-monitor"), "--dry-run"],
        env=fake.env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert daemon_dry.returncode == 2 and "--dry-run needs --once" in daemon_dry.stderr


def test_m6_mails_saved_with_the_state_are_spooled_once_after_a_crash(
    fake: FakeHost, smtp: SmtpSink
) -> None:
    """The alert state and its mails are saved first, then spooled: a daemon killed between
    the two spools them at its restart, and one killed after the spooling does not spool them
    twice (the spool remembers what it sent)."""
    import json

    fake.settings(f"SMTP_HOST=127.0.0.1\nSMTP_PORT={smtp.port}\n")
    fake.define("web", POLICY + "MONITOR_REPEAT=0\n")
    fake.start("web")
    fake.rss_pct("web", 95)
    smtp.stop()

    def once() -> None:
        result = subprocess.run(
            [str(BIN / "vs-monitor"), "--once"],
            env=fake.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.stdout == "vsh-fake:web:running:rss\n", result.stderr

    once()  # server down: the mail waits in the spool
    spool = Path(fake.env["VS_STATE_DIR"]) / "monitor" / "spool"
    (mail,) = spool.glob("*.eml")
    state_file = Path(fake.env["VS_STATE_DIR"]) / "monitor" / "guests" / "web.json"
    # Rewind to "killed after saving the state, before spooling": the mail is only in the
    # state's outbox.
    state = json.loads(state_file.read_text())
    outbox = [[mail.name, mail.read_text()]]
    state["memory"]["outbox"] = outbox
    state_file.write_text(json.dumps(state))
    mail.unlink()
    smtp.start()
    once()
    assert smtp.subjects() == ["vsh-fake:web:rss"]
    # "Killed after spooling and sending, before the outbox was cleared": nothing more.
    state = json.loads(state_file.read_text())
    state["memory"]["outbox"] = outbox
    state_file.write_text(json.dumps(state))
    once()
    assert smtp.subjects() == ["vsh-fake:web:rss"]
    assert list(spool.glob("*.eml")) == []


def _in_process_monitor(fake: FakeHost, name: str) -> Monitor:
    settings, paths = load_settings(fake.env)
    layout = probe_layout(fake.env["VS_CGROUP_MOUNTS"])
    monitor = Monitor(paths, settings, "vsh-fake", layout, names=[name], dry_run=True)
    monitor.rescan()
    return monitor


@pytest.mark.privileged  # the sock_diag socket is made in the guest's (here: this) namespace
def test_a_guest_dropped_during_its_check_has_its_files_closed_by_the_check(
    fake: FakeHost,
) -> None:
    fake.define("web", POLICY.replace("MONITOR_SOCKETS=no", "MONITOR_SOCKETS=yes"))
    fake.start("web")
    monitor = _in_process_monitor(fake, "web")
    try:
        monitor.run_check("web")  # keeps its sock_diag socket and cgroup
        watch = monitor.watches["web"]
        assert watch.diag._sock is not None and watch.cgroup is not None
        fake.hang("web")  # the next check blocks opening its memory counter
        assert monitor.start_check("web")
        deadline = time.monotonic() + 10
        while not watch.lock.locked():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        monitor.names = []
        monitor.rescan()  # drops it while the check holds the watch: nothing closed under it
        assert "web" not in monitor.watches
        assert watch.diag._sock is not None and watch.cgroup is not None
        fifo = fake.cg("memory", "web") / "memory.usage_in_bytes"
        fd = os.open(fifo, os.O_WRONLY)  # the check's open returns; its read fails
        os.close(fd)
        monitor.workers.wait("web")
        assert watch.diag._sock is None and watch.cgroup is None  # closed by the check
    finally:
        monitor.close()


def test_a_guest_dropped_between_checks_has_its_files_closed_at_once(fake: FakeHost) -> None:
    fake.define("web", POLICY)
    fake.start("web")
    monitor = _in_process_monitor(fake, "web")
    monitor.run_check("web")
    watch = monitor.watches["web"]
    assert watch.cgroup is not None
    monitor.names = []
    monitor.rescan()
    assert watch.cgroup is None and not watch.lock.locked()
    monitor.close()
