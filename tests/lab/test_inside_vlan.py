"""A guest routed on an 802.1Q VLAN, for real: runs inside the lab VM only (this machine's
kernel has no 8021q module). tests/lab/test_lab.py boots the VM with 8021q and runs this file there
(VS_LAB_INSIDE=1).

The test host's uplink up0 is a veth to a LAN namespace; networks.conf puts the guest's network
on VLAN 7, so vs-control creates the uplink up0.7 (802.1Q on up0, with create.conf's MTU), and
the LAN side answers on its own lan0.7: packets between the LAN and the guest are tagged."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.guests import PEERS, Host, Lan, netns_prefix, serve, wired_to_lan

if not os.environ.get("VS_LAB_INSIDE"):
    pytest.skip("runs inside the lab VM (tests/lab/test_lab.py boots it)", allow_module_level=True)

pytestmark = [pytest.mark.privileged, pytest.mark.e2e]

WEB = "198.51.100.10"


@pytest.fixture
def vlan_routed(host: Host, net_probe_binary: Path) -> Iterator[tuple[Host, Lan]]:
    with wired_to_lan(host, net_probe_binary, vlan=7, create_conf="MTU=1400\n") as lan:
        yield host, lan


def test_a_guest_on_a_vlan(vlan_routed: tuple[Host, Lan]) -> None:
    host, lan = vlan_routed
    directory = host.define("web", WEB)
    (directory / "firewall.conf").write_text("enable\nallow from 0/0 to tcp/80\n")
    host.run("vs-control", "--name", "web", "--start")
    links = subprocess.run(
        [*netns_prefix(host.netns), "ip", "-d", "-o", "link", "show", "up0.7"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "vlan protocol 802.1Q id 7" in links and "mtu 1400" in links
    assert host.run("vs-net", "--name", "web").stdout.split(":")[3:5] == ["up", "up"]
    serve(host, "web", "tcp", 80)
    serve(host, "web", "tcp", 22)
    assert lan.connect(WEB, 80, src=PEERS["outsider"]) == "open"
    assert lan.connect(WEB, 22, src=PEERS["outsider"]) == "refused"
    host.run("vs-control", "--name", "web", "--stop")
    gone = subprocess.run(
        [*netns_prefix(host.netns), "ip", "link", "show", "up0.7"], capture_output=True, check=False
    )
    assert gone.returncode != 0  # the uplink vs-tools created went with its last guest
