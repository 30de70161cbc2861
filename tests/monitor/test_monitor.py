"""vs-monitor against real running guests and a real SMTP server (aiosmtpd on loopback): each
alert kind fires from a real cause inside a busybox guest (memory held past 90% of rss, the
memory limit hit, forks up to the process limit, a CPU-bound task for the load, a new
listening socket, the guest stopped and started again), and M7: the monitor never executes a
binary of the guest."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.fakehost import SmtpSink
from tests.guests import Host

BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.privileged, pytest.mark.e2e]


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    sink.start()
    yield sink
    sink.stop()


def _configure(host: Host, smtp: SmtpSink, name: str, policy: str) -> None:
    conf = Path(host.env["VS_ETC_DIR"]) / "vs-tools.conf"
    if "SMTP_PORT" not in conf.read_text():
        with open(conf, "a") as handle:
            handle.write(f"SMTP_HOST=127.0.0.1\nSMTP_PORT={smtp.port}\nSYSLOG=no\n")
    (host.guests_dir / name / "monitor.conf").write_text(
        "MONITOR_MAILTO=admin@example.org\nMONITOR_POOLING=1\nMONITOR_REPEAT=0\n" + policy
    )


@pytest.fixture
def monitor_daemon(host: Host, tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _background(host: Host, name: str, *command: str) -> subprocess.Popen[str]:
    """A command inside the guest that runs while the test goes on."""
    return subprocess.Popen(
        [str(BIN / "vs-exec"), "-T", name, "--", *command],
        env=host.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_every_alert_kind_fires_from_a_real_cause(
    host: Host,
    smtp: SmtpSink,
    tmp_path: Path,
    monitor_daemon: list[subprocess.Popen[bytes]],
) -> None:
    host.define("web", "198.51.100.10", rss=64, proc=16, cpu="1/2")
    _configure(
        host,
        smtp,
        "web",
        "RSS_THRESHOLD=90\nPROC_THRESHOLD=90\nTMPFS_THRESHOLD=0\nDISK_THRESHOLD=0\n"
        "LOADAVG_1_THRESHOLD=0.15\nMONITOR_SOCKETS=yes\n",
    )
    host.run("vs-control", "--name", "web", "--start")
    log = open(tmp_path / "monitor.log", "w")  # noqa: SIM115 - closed with the test
    monitor_daemon.append(
        subprocess.Popen(
            [str(BIN / "vs-monitor"), "--name", "web", "-v"], env=host.env, stdout=log, stderr=log
        )
    )
    state = Path(host.env["VS_STATE_DIR"]) / "monitor" / "guests" / "web.json"
    deadline = time.monotonic() + 20
    while not state.exists():
        assert time.monotonic() < deadline, (tmp_path / "monitor.log").read_text()
        time.sleep(0.1)
    time.sleep(1.5)  # the sockets baseline is taken

    # Memory held past 90% of the 64 MB limit, then released.
    hold = _background(host, "web", "vstprobe", "hold", "59", "6")
    mail = smtp.wait_subject("vsh-test:web:rss", timeout_s=20)
    assert "of 64" in mail.body and "memory" in mail.body
    hold.wait(timeout=30)
    smtp.wait_subject("vsh-test:web:rss ok", timeout_s=20)

    # The memory limit hit: the kernel's fail counter moves (and the OOM killer acts).
    host.exec("web", "vstprobe", "alloc", "100", check=False)
    mail = smtp.wait_subject("vsh-test:web:rss-hits", timeout_s=20)
    assert "memory limit hit" in mail.body

    # Forks up to the process limit: pids.events max moves, and the count passes 90%.
    forks = host.exec("web", "vstprobe", "forks", "30")
    assert "forked 30" not in forks  # the limit did refuse some
    mail = smtp.wait_subject("vsh-test:web:proc-hits", timeout_s=20)
    assert "process limit hit" in mail.body
    smtp.wait_subject("vsh-test:web:proc", timeout_s=20)

    # A CPU-bound task: the guest's own 1-minute load passes 0.15.
    spin = _background(host, "web", "vstprobe", "spin", "15")
    mail = smtp.wait_subject("vsh-test:web:load1", timeout_s=30)
    assert "load1 of the guest's tasks" in mail.body
    spin.wait(timeout=30)

    # A new listening socket inside the guest (its own network namespace).
    host.exec("web", "sh", "-c", "nc -l -p 8080 </dev/null >/dev/null 2>&1 &")
    mail = smtp.wait_subject("vsh-test:web:sockets changed", timeout_s=20)
    assert ":8080" in mail.body and "+ tcp" in mail.body

    # Stopped, then running again.
    host.run("vs-control", "--name", "web", "--stop")
    mail = smtp.wait_subject("vsh-test:web:stopped", timeout_s=20)
    assert "stopped" in mail.body
    host.run("vs-control", "--name", "web", "--start")
    smtp.wait_subject("vsh-test:web:running", timeout_s=20)

    subjects = smtp.subjects()
    for once in ("vsh-test:web:rss", "vsh-test:web:rss ok", "vsh-test:web:stopped"):
        assert subjects.count(once) == 1, subjects
    assert all(s.startswith("vsh-test:web:") for s in subjects)


def test_m7_the_monitor_never_executes_a_binary_of_the_guest(
    host: Host, smtp: SmtpSink, tmp_path: Path
) -> None:
    """Trojans planted where a careless monitor would look (ps, netstat, ss, df, free, cat,
    busybox itself) record any run; strace -f records every execve of vs-monitor --once."""
    host.define("web", "198.51.100.11")
    _configure(host, smtp, "web", "")
    rootfs = host.rootfs("web")
    for tool in ("bin/ps", "bin/netstat", "bin/ss", "bin/df", "usr/bin/free", "bin/cat"):
        target = rootfs / tool
        target.unlink(missing_ok=True)
        target.write_text("#!/bin/sh\necho ran > /vst-trojan-ran\n")
        target.chmod(0o755)
    host.run("vs-control", "--name", "web", "--start")
    trace = tmp_path / "trace"
    result = subprocess.run(
        [
            *("strace", "-f", "-qq", "-e", "trace=execve,execveat", "-o", str(trace)),
            *(str(BIN / "vs-monitor"), "--once", "--name", "web"),
        ],
        env=host.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "vsh-test:web:running:-\n"
    execs = [line for line in trace.read_text().splitlines() if "execve" in line]
    assert len(execs) == 1 and str(BIN / "vs-monitor") in execs[0], execs
    assert not (rootfs / "vst-trojan-ran").exists()
    assert not Path("/vst-trojan-ran").exists()
