"""vs-move of a serving, firewalled, routed guest: the LAN reaches it at its address right after
the move, its neighbour cache updated by the destination's announcement (no flushing by hand),
its firewall moved with it, and nothing of it left routed at the source."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.guests import Lan, named_netns
from tests.pool.test_copy import _create
from tests.poolhosts import Pool, stop_guests

pytestmark = [pytest.mark.privileged, pytest.mark.e2e]

WEB = "198.51.100.10"
SLAVES = {"vsh-01": "198.51.100.201", "vsh-02": "198.51.100.202"}


def _ip(netns: str, *argv: str) -> str:
    return subprocess.run(["ip", "-n", netns, *argv], check=True, capture_output=True,
                          text=True).stdout  # fmt: skip


@pytest.fixture
def lan(pool: Pool, net_probe_binary: Path, run_prefix: str) -> Iterator[Lan]:
    """A second bridge, the guests' LAN: the gateway's namespace and the uplink up0 of vsh-01
    and vsh-02, which route their guests there (NETWORK=routed)."""
    bridge = pool.bridge_ns
    _ip(bridge, "link", "add", "lanbr", "type", "bridge")
    _ip(bridge, "link", "set", "lanbr", "up")
    with named_netns(f"{run_prefix}-plan") as lan_ns:
        try:
            _ip(bridge, "link", "add", "q0", "type", "veth", "peer", "name", "lan0", "netns",
                lan_ns)  # fmt: skip
            _ip(lan_ns, "addr", "add", "198.51.100.1/24", "dev", "lan0")
            _ip(lan_ns, "link", "set", "lan0", "up")
            _ip(bridge, "link", "set", "q0", "master", "lanbr", "up")
            for index, (name, address) in enumerate(SLAVES.items(), start=1):
                host = pool.slave(name)
                _ip(bridge, "link", "add", f"q{index}", "type", "veth", "peer", "name", "up0",
                    "netns", host.netns)  # fmt: skip
                _ip(bridge, "link", "set", f"q{index}", "master", "lanbr", "up")
                _ip(host.netns, "addr", "add", f"{address}/24", "dev", "up0")
                _ip(host.netns, "link", "set", "up0", "up")
                etc = host.base / "etc"
                (etc / "networks.conf").write_text("0,198.51.100.0/24,198.51.100.1\n")
                with open(etc / "create.conf", "a") as create:
                    create.write("DEFAULT_DEVICE=up0\n")
                settings = etc / "vs-tools.conf"
                settings.write_text(settings.read_text().replace("NETWORK=none", "NETWORK=routed"))
            gateway = Lan(lan_ns, net_probe_binary)
            yield gateway
        finally:
            for name in SLAVES:
                stop_guests(pool.slave(name))
            for index in range(len(SLAVES) + 1):
                subprocess.run(["ip", "-n", bridge, "link", "del", f"q{index}"], check=False,
                               capture_output=True)  # fmt: skip
            subprocess.run(["ip", "-n", bridge, "link", "del", "lanbr"], check=False,
                           capture_output=True)  # fmt: skip


def _mac(netns: str, link: str) -> str:
    return _ip(netns, "-br", "link", "show", link).split()[2]


def _open_within(lan: Lan, port: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if lan.connect(WEB, port, ms=300) == "open":
            return True
        time.sleep(0.05)
    return False


def test_a_serving_guest_is_reachable_at_its_address_right_after_the_move(
    pool: Pool, lan: Lan, net_probe_binary: Path
) -> None:
    one, two = pool.slave("vsh-01"), pool.slave("vsh-02")
    root = _create(one, "web", WEB, 101)
    shutil.copy2(net_probe_binary, root / "bin" / "vstnet")
    with open(root / "etc" / "inittab", "a") as inittab:
        inittab.write("::respawn:/bin/vstnet listen tcp 80\n")
    (one.base / "guests" / "web" / "firewall.conf").write_text("enable\nallow from 0/0 to tcp/80\n")
    one.run("vs-control", "--name", "web", "--start")
    assert _open_within(lan, 80, 10)
    assert lan.connect(WEB, 81, ms=300) != "open"  # its firewall
    assert f"lladdr {_mac(one.netns, 'up0')}" in _ip(lan.netns, "neigh", "show", WEB)
    pool.master.run("vs-move", "--name", "web", "--dst_host", "vsh-02")
    # The destination announced it: the LAN's cache has its MAC at once, not after a timeout.
    assert f"lladdr {_mac(two.netns, 'up0')}" in _ip(lan.netns, "neigh", "show", WEB)
    assert _open_within(lan, 80, 5)
    assert lan.connect(WEB, 81, ms=300) != "open"  # the firewall moved with it
    assert WEB not in _ip(one.netns, "neigh", "show", "proxy")
    assert WEB not in _ip(one.netns, "route", "show", "table", "all")
    assert WEB in _ip(two.netns, "neigh", "show", "proxy")
