"""The pool's test hosts (harness.pool) as fixtures: a master and three slaves shared by the
tests of a session (set up once, well under a second each); ``pool`` hands them to a test with
no guest on any of them, and removes whatever the test made when it ends, also when it fails.
``pool_lan`` wires slaves to a LAN their guests are routed on, untagged or on an 802.1Q VLAN."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from harness.pool import (
    ADDRESSES,
    MASTER,
    SESSION_PATH,
    SLAVES,
    Pool,
    PoolHost,
    kill_netns_processes,
    pool_up,
    stop_guests,
    wipe,
)
from tests.guests import Lan, named_netns

__all__ = ["ADDRESSES", "MASTER", "SESSION_PATH", "SLAVES", "Pool", "PoolHost",
           "kill_netns_processes", "pool_lan", "stop_guests"]  # fmt: skip


@pytest.fixture(scope="session")
def pool_hosts(tmp_path_factory: pytest.TempPathFactory, run_prefix: str) -> Iterator[Pool]:
    """The master and its three slaves, for the whole session. STOP_TIMEOUT=1: a busybox
    guest's own shutdown takes 3 s (its init's fixed sleeps), and the pool's tests stop guests
    some forty times; after 1 s its supervisor kills it, a stop like any other."""
    with pool_up(tmp_path_factory.mktemp("pool"), run_prefix, stop_timeout_s=1) as hosts:
        yield hosts


@pytest.fixture
def pool(pool_hosts: Pool) -> Iterator[Pool]:
    """The pool with no guest anywhere and its configuration as set up; what the test made or
    changed is undone after it."""
    for host in pool_hosts.hosts:
        wipe(host)
    yield pool_hosts
    for host in pool_hosts.hosts:
        wipe(host)
        for path in (host.base / "etc").iterdir():
            if path.suffix == ".conf" and path not in pool_hosts.configs:
                path.unlink()
    for path, text in pool_hosts.configs.items():
        path.write_text(text)


def _ip(netns: str, *argv: str) -> None:
    subprocess.run(["ip", "-n", netns, *argv], check=True, capture_output=True)


@contextlib.contextmanager
def pool_lan(
    pool: Pool, net_probe: Path, lan_ns: str, slaves: Mapping[str, str | None], *, vlan: int = 0
) -> Iterator[Lan]:
    """A second bridge, the guests' LAN: the gateway's namespace ``lan_ns`` (198.51.100.1) and
    the uplink up0 of each of ``slaves``, which routes its guests there (NETWORK=routed). On
    VLAN 0 up0 carries the network untagged and gets the slave's own address if one is given;
    on another ``vlan`` networks.conf puts the network there, so vs-control makes up0.VLAN
    (802.1Q, the VM lab) and the gateway answers on its own lan0.VLAN. The slaves' guests are
    stopped before the LAN goes."""
    bridge = pool.bridge_ns
    _ip(bridge, "link", "add", "lanbr", "type", "bridge")
    _ip(bridge, "link", "set", "lanbr", "up")
    lan = None
    with named_netns(lan_ns):
        try:
            _ip(bridge, "link", "add", "q0", "type", "veth", "peer", "name", "lan0", "netns",
                lan_ns)  # fmt: skip
            _ip(lan_ns, "link", "set", "lan0", "up")
            gateway_link = "lan0"
            if vlan:
                gateway_link = f"lan0.{vlan}"
                _ip(lan_ns, "link", "add", "link", "lan0", "name", gateway_link, "type", "vlan",
                    "id", str(vlan))  # fmt: skip
                _ip(lan_ns, "link", "set", gateway_link, "up")
            _ip(lan_ns, "addr", "add", "198.51.100.1/24", "dev", gateway_link)
            _ip(bridge, "link", "set", "q0", "master", "lanbr", "up")
            for index, (name, address) in enumerate(slaves.items(), start=1):
                host = pool.slave(name)
                _ip(bridge, "link", "add", f"q{index}", "type", "veth", "peer", "name", "up0",
                    "netns", host.netns)  # fmt: skip
                _ip(bridge, "link", "set", f"q{index}", "master", "lanbr", "up")
                if address is not None and not vlan:
                    _ip(host.netns, "addr", "add", f"{address}/24", "dev", "up0")
                _ip(host.netns, "link", "set", "up0", "up")
                etc = host.base / "etc"
                (etc / "networks.conf").write_text(f"{vlan},198.51.100.0/24,198.51.100.1\n")
                with open(etc / "create.conf", "a") as create:
                    create.write("DEFAULT_DEVICE=up0\n")
                settings = etc / "vs-tools.conf"
                settings.write_text(settings.read_text().replace("NETWORK=none", "NETWORK=routed"))
            lan = Lan(lan_ns, net_probe)
            yield lan
        finally:
            if lan is not None:
                lan.stop()
            for name in slaves:
                stop_guests(pool.slave(name))
            for index in range(len(slaves) + 1):
                subprocess.run(["ip", "-n", bridge, "link", "del", f"q{index}"], check=False,
                               capture_output=True)  # fmt: skip
            subprocess.run(["ip", "-n", bridge, "link", "del", "lanbr"], check=False,
                           capture_output=True)  # fmt: skip
