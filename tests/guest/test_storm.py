"""vs-control --all --start with starts in parallel (--parallel) and --stop --kill (issue 17):
every guest runs or says why not, a failed start is rolled back without stopping the others,
and a kill leaves no process, cgroup, route or firewall behind."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.guests import Host, Lan, host_ip, host_nft

pytestmark = [pytest.mark.privileged, pytest.mark.e2e]


def _no_guest_cgroups(host: Host) -> bool:
    return all(
        not any(p.is_dir() for p in host.cgroup_dir(c).iterdir())
        if host.cgroup_dir(c).exists()
        else True
        for c in ("memory", "pids", "cpu", "freezer")
    )


def test_parallel_starts_run_every_guest_and_report_the_one_that_fails(host: Host) -> None:
    names = [f"p{index}" for index in range(6)]
    for index, name in enumerate(names):
        host.define(name, f"198.51.100.{40 + index}")
    (host.rootfs("p3") / "sbin" / "init").unlink()  # p3 cannot start: no init
    started = host.run("vs-control", "--all", "--start", "--parallel", "4", check=False)
    assert started.returncode == 3, started.stderr
    assert "vs-control: p3: guest p3: no /sbin/init in" in started.stderr
    assert started.stdout.splitlines() == [
        f"vsh-test:{n}:disabled:{'stopped' if n == 'p3' else 'running'}" for n in names
    ]
    assert host.state("p3") is None and not host.cgroup_dir("memory", "p3").exists()
    pids = [int(str(host.state(n)["init_pid"])) for n in names if n != "p3"]  # type: ignore[index]
    killed = host.run("vs-control", "--all", "--stop", "--kill", "--yes")
    assert killed.stdout.splitlines() == [f"vsh-test:{n}:disabled:stopped" for n in names]
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
    assert all(host.state(n) is None for n in names)
    assert _no_guest_cgroups(host)


def test_a_kill_skips_the_shutdown_signal(host: Host) -> None:
    """--kill does not wait for init's shutdown: an init without a handler for its shutdown
    signal (sleep, as PID 1, ignores it) is gone at once, not after STOP_TIMEOUT (5 s)."""
    conf = host.define("sh", "198.51.100.50") / "guest.conf"
    conf.write_text(conf.read_text() + 'INIT="/bin/sleep 1000"\n')
    host.run("vs-control", "--name", "sh", "--start")
    killed = host.run("vs-control", "--name", "sh", "--stop", "--kill", timeout=4)
    assert killed.stdout == "vsh-test:sh:disabled:stopped\n"
    assert host.state("sh") is None


@pytest.mark.parametrize(
    "argv",
    [
        ("--name", "web", "--start", "--parallel", "2"),
        ("--all", "--stop", "--parallel", "2"),
        ("--all", "--start", "--parallel", "0"),
        ("--all", "--start", "--parallel", "x"),
        ("--name", "web", "--start", "--kill"),
    ],
)
def test_parallel_and_kill_only_where_they_mean_something(host: Host, argv: tuple[str]) -> None:
    host.define("web", "198.51.100.10")
    refused = host.run("vs-control", *argv, check=False)
    assert refused.returncode == 2, refused.stderr
    assert host.state("web") is None


def test_parallel_starts_with_network_and_a_kill_leave_nothing(routed: tuple[Host, Lan]) -> None:
    host, _ = routed
    names = [f"n{index}" for index in range(4)]
    for index, name in enumerate(names):
        host.define(name, f"198.51.100.{60 + index}")
        (host.guests_dir / name / "firewall.conf").write_text("enable\nallow from 0/0 to tcp/80\n")
    host.run("vs-control", "--all", "--start", "--parallel", "4")
    routes = host_ip(host, "route")
    fw = host_nft(host, "list", "map", "inet", "vstools", "fw_in")
    for index, name in enumerate(names):
        assert f"198.51.100.{60 + index} dev" in routes
        element = rf'198\.51\.100\.{60 + index} (comment "vst:[0-9a-f]+" )?: jump in_{name}\b'
        assert re.search(element, fw), fw
    host.run("vs-control", "--all", "--stop", "--kill", "--yes")
    routes = host_ip(host, "route")
    fw = host_nft(host, "list", "map", "inet", "vstools", "fw_in")
    assert not any(
        f"198.51.100.{60 + i} " in routes or f"in_{n}" in fw for i, n in enumerate(names)
    )
    assert _no_guest_cgroups(host)
