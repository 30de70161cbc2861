"""A guest's address announced where it starts (gratuitous ARP): a neighbour that still has
the address at another MAC (the host the guest was moved from) learns the new one at once."""

from __future__ import annotations

import subprocess
import sys
from ipaddress import IPv4Address

import pytest

from tests.guests import named_netns
from vstools.host.netlink import gratuitous_arp

pytestmark = [pytest.mark.privileged]


def test_the_frames_say_the_address_is_at_this_mac() -> None:
    mac = bytes.fromhex("0200c0a80001")
    request = gratuitous_arp(mac, IPv4Address("198.51.100.10"), 1)
    assert request[:6] == b"\xff" * 6 and request[6:12] == mac and request[12:14] == b"\x08\x06"
    arp = request[14:]
    assert arp[6:8] == b"\x00\x01"  # a request
    assert arp[8:14] == mac and arp[14:18] == bytes([198, 51, 100, 10])  # sender
    assert arp[24:28] == bytes([198, 51, 100, 10])  # target: the same address
    assert gratuitous_arp(mac, IPv4Address("198.51.100.10"), 2)[20:22] == b"\x00\x02"


def test_a_neighbour_with_a_stale_mac_learns_the_new_one(run_prefix: str) -> None:
    def ip(netns: str, *argv: str) -> str:
        return subprocess.run(["ip", "-n", netns, *argv], check=True, capture_output=True,
                              text=True).stdout  # fmt: skip

    with named_netns(f"{run_prefix}-anh") as here, named_netns(f"{run_prefix}-anl") as lan:
        ip(here, "link", "add", "up0", "type", "veth", "peer", "name", "lan0", "netns", lan)
        ip(lan, "addr", "add", "198.51.100.1/24", "dev", "lan0")
        for netns, link in ((here, "up0"), (lan, "lan0")):
            ip(netns, "link", "set", link, "up")
        ip(lan, "neigh", "replace", "198.51.100.10", "lladdr", "02:00:00:00:00:01", "dev",
           "lan0", "nud", "reachable")  # fmt: skip
        mac = ip(here, "-br", "link", "show", "up0").split()[2]
        subprocess.run(
            ["ip", "netns", "exec", here, sys.executable, "-c",
             "from ipaddress import IPv4Address; from vstools.host.netlink import Netns;"
             " Netns().announce(IPv4Address('198.51.100.10'), 'up0')"],
            check=True, capture_output=True,
        )  # fmt: skip
        assert f"lladdr {mac}" in ip(lan, "neigh", "show", "198.51.100.10")
