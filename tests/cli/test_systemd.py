"""The systemd units: checked with systemd-analyze verify, and their ExecStart/ExecStop lines
run directly (PID 1 here is not systemd), with a notify socket standing in for systemd."""

from __future__ import annotations

import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.guests import Host
from tests.units import directive as _directive
from tests.units import notify_socket, verify
from tests.units import unit as _unit

UNITS = ("vs-guest@.service", "vs-guests.service")


def test_units_verify(tmp_path: Path) -> None:
    warnings = verify(tmp_path, UNITS, "web")
    assert "vs-guest" not in warnings  # no warning about our units either


def test_units_call_existing_commands() -> None:
    for name in UNITS:
        text = _unit(name)
        for key in ("ExecStart", "ExecStop"):
            if f"\n{key}=" in text:
                program = shlex.split(_directive(text, key))[0]
                assert Path(program).is_file(), program


@pytest.mark.privileged
@pytest.mark.e2e
def test_vs_guest_execstart_runs_the_supervisor_and_notifies(host: Host, tmp_path: Path) -> None:
    host.define("web", "198.51.100.10")
    notify = tmp_path / "notify"
    argv = shlex.split(_directive(_unit("vs-guest@.service"), "ExecStart").replace("%i", "web"))
    env = dict(host.env, NOTIFY_SOCKET=str(notify))
    with notify_socket(notify) as listener:
        service = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert b"READY=1" in listener.recv(4096)
            status = host.run("vs-control", "--name", "web").stdout
            assert status == "vsh-test:web:disabled:running\n"
            assert host.state("web")["supervisor_pid"] == service.pid  # type: ignore[index]
            service.send_signal(signal.SIGTERM)  # what systemctl stop does (KillMode=mixed)
            assert service.wait(timeout=30) == 0
        finally:
            if service.poll() is None:
                service.kill()
                service.wait()
    assert host.state("web") is None
    assert not host.cgroup_dir("memory", "web").exists()


@pytest.mark.privileged
@pytest.mark.e2e
def test_vs_guests_starts_enabled_guests_and_stops_all(host: Host) -> None:
    host.define("on", "198.51.100.10")
    host.define("off", "198.51.100.11")
    host.run("vs-control", "--name", "on", "--enable")
    text = _unit("vs-guests.service")
    start = shlex.split(_directive(text, "ExecStart"))
    stop = shlex.split(_directive(text, "ExecStop"))
    out = subprocess.run(start, env=host.env, capture_output=True, text=True, check=True).stdout
    assert out == "vsh-test:on:enabled:running\n"
    assert host.state("off") is None
    host.run("vs-control", "--name", "off", "--start")
    subprocess.run(stop, env=host.env, capture_output=True, text=True, check=True)
    deadline = time.monotonic() + 20
    while (host.state("on") or host.state("off")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert host.state("on") is None and host.state("off") is None
