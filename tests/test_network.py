"""Routed guests and the host-enforced firewall with real packets (catalogue F3-F17)."""

from __future__ import annotations

import pytest

from tests.guests import PEERS, Host, Lan, serve

pytestmark = [pytest.mark.privileged, pytest.mark.e2e]

SLIDES_FIREWALL = f"""enable
## Policy is ACCEPT (ESTABLISHED,RELATED is implicit)
allow to {PEERS["dns"]},{PEERS["dns2"]} to udp/53          # DNS
allow to {PEERS["relay"]} to tcp/25                   # mail relay
allow from {PEERS["monitoring"]} to tcp/5666,tcp/4949        # Nagios, Munin
allow from 203.0.113.0/24,{PEERS["admin"]} to tcp/22     # sshd
allow from 0/0 to tcp/80                        # httpd
## DENY is implicit
"""


def test_smoke(routed: tuple[Host, Lan]) -> None:
    host, lan = routed
    directory = host.define("web", "198.51.100.10")
    (directory / "firewall.conf").write_text(SLIDES_FIREWALL)
    host.run("vs-control", "--name", "web", "--start")
    for port in (80, 22, 5666, 443):
        serve(host, "web", "tcp", port)
    assert lan.connect("198.51.100.10", 80, src=PEERS["outsider"]) == "open"
    assert lan.connect("198.51.100.10", 22, src=PEERS["admin"]) == "open"
    assert lan.connect("198.51.100.10", 22, src=PEERS["outsider"]) == "refused"
    assert lan.connect("198.51.100.10", 443, src=PEERS["outsider"]) == "refused"
