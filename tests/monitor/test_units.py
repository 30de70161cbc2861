"""vs-monitor.service and vs-monitor@.service: checked with systemd-analyze verify, and their
ExecStart lines run directly (PID 1 here is not systemd) with a notify socket and a watchdog
period standing in for systemd's."""

from __future__ import annotations

import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest

from harness.fakehost import FakeHost
from tests.units import directive as _directive
from tests.units import notify_socket, verify
from tests.units import unit as _unit

UNITS = ("vs-monitor.service", "vs-monitor@.service")


def test_units_verify(tmp_path: Path) -> None:
    assert "vs-monitor" not in verify(tmp_path, UNITS, "web")


@pytest.mark.parametrize("name", UNITS)
def test_units_are_notify_services_with_a_watchdog(name: str) -> None:
    text = _unit(name)
    assert _directive(text, "Type") == "notify"
    assert int(_directive(text, "WatchdogSec")) > 0
    assert _directive(text, "Restart") == "on-failure"
    assert Path(shlex.split(_directive(text, "ExecStart"))[0]).is_file()


@pytest.mark.parametrize(("name", "instance"), [(UNITS[0], None), (UNITS[1], "web")])
def test_execstart_notifies_ready_pings_and_stops_on_sigterm(
    tmp_path: Path, name: str, instance: str | None
) -> None:
    fake = FakeHost(tmp_path / "host")
    fake.settings("SMTP_HOST=127.0.0.1\nSMTP_PORT=9\n")
    fake.define("web", "MONITOR_POOLING=1\nTMPFS_THRESHOLD=0\nMONITOR_SOCKETS=no\n")
    fake.start("web")
    notify = tmp_path / "notify"
    command = _directive(_unit(name), "ExecStart")
    argv = shlex.split(command.replace("%i", instance or ""))
    env = dict(fake.env, NOTIFY_SOCKET=str(notify), WATCHDOG_USEC="400000")
    with notify_socket(notify) as listener:
        service = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert b"READY=1" in listener.recv(4096)
            got = [listener.recv(4096) for _ in range(3)]
            assert got == [b"WATCHDOG=1"] * 3
            deadline = time.monotonic() + 10
            while fake.state_of("web") is None:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            service.send_signal(signal.SIGTERM)  # systemctl stop
            assert service.wait(timeout=20) == 0
            messages = []
            listener.settimeout(0.5)
            while True:
                try:
                    messages.append(listener.recv(4096))
                except TimeoutError:
                    break
            assert b"STOPPING=1" in messages
        finally:
            if service.poll() is None:
                service.kill()
                service.wait()
            fake.close()
