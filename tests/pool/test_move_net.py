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

from tests.guests import Lan
from tests.pool.test_copy import _create
from tests.poolhosts import Pool, pool_lan

pytestmark = [pytest.mark.privileged, pytest.mark.e2e]

WEB = "198.51.100.10"
SLAVES = {"vsh-01": "198.51.100.201", "vsh-02": "198.51.100.202"}


def _ip(netns: str, *argv: str) -> str:
    return subprocess.run(["ip", "-n", netns, *argv], check=True, capture_output=True,
                          text=True).stdout  # fmt: skip


@pytest.fixture
def lan(pool: Pool, net_probe_binary: Path, run_prefix: str) -> Iterator[Lan]:
    """The guests' LAN: the gateway's namespace and the uplink up0 of vsh-01 and vsh-02, which
    route their guests there (NETWORK=routed)."""
    with pool_lan(pool, net_probe_binary, f"{run_prefix}-plan", SLAVES) as gateway:
        yield gateway


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
