"""Is a new guest's address free? Not configured on this host (netlink) and not answering ARP
on the guest's uplink (arping): read-only checks for vs-create."""

from __future__ import annotations

import logging
import re
from ipaddress import IPv4Address
from typing import TYPE_CHECKING

from vstools.config.create import CreateConf
from vstools.config.networks import Network
from vstools.errors import HostError, StateError
from vstools.host.netlink import Netns
from vstools.host.run import run, which
from vstools.net.plan import uplink_name

if TYPE_CHECKING:
    from vstools.host.netlink import Netns


log = logging.getLogger("vstools.network")

# arping's -w takes whole seconds. One second covers a LAN host (it answers in milliseconds) and
# a proxy ARP answer, which the kernel delays by up to proxy_delay (0.8 s by default).
ARP_TIMEOUT_S = 1


def check_address_free(
    ip: IPv4Address, network: Network | None, create: CreateConf, *, probe_network: bool
) -> list[str]:
    """Refuse (StateError) an address configured on an interface of this host (the network
    namespace this runs in) or answering ARP on the guest's uplink. Read-only; returns what was
    checked, for --dry-run and the log. The probe is skipped, with a warning that says why, when
    ``probe_network`` is false (NETWORK=none), the address is in no network, or the uplink does
    not exist or is down."""

    with Netns() as host:
        for interface, address in host.addresses():
            if address.ip == ip:
                raise StateError(f"{ip} is already configured on {interface} of this host")
        checked = [f"{ip} is configured on no interface of this host"]
        if not probe_network:
            skipped: str | None = "NETWORK=none in vs-tools.conf (guests get a loopback only)"
        elif network is None:
            skipped = "it is in no network of networks.conf (the guest gets a loopback only)"
        else:
            uplink = uplink_name(create.device, network.vlan)
            skipped = _probe_skipped(host, uplink, network.vlan)
        if skipped is not None:
            log.warning("warning: %s not probed on the network: %s", ip, skipped)
            return [*checked, f"{ip} not probed on the network: {skipped}"]
        source = next(
            (a.ip for _, a in host.addresses(uplink) if ip in a.network and a.ip != ip), None
        )
    return [*checked, _arp_probe(ip, uplink, source)]


def _probe_skipped(host: Netns, uplink: str, vlan: int) -> str | None:
    """Why the uplink cannot be probed, or None."""

    info = host.link_info(uplink)
    if info is None and vlan:
        return (
            f"its uplink {uplink} does not exist yet (created when the first guest of"
            f" VLAN {vlan} starts)"
        )
    if info is None:
        return f"its uplink {uplink} (DEFAULT_DEVICE in create.conf) does not exist"
    if not info["up"]:
        return f"its uplink {uplink} is down"
    if which("arping") is None:
        return "arping is not installed (Debian package iputils-arping)"
    return None


def _arp_probe(ip: IPv4Address, uplink: str, source: IPv4Address | None) -> str:
    """One ARP request for ``ip`` on ``uplink``; StateError when something answers.

    With an address of the host in the guest's network on the uplink, the request is sent from
    it: real hosts answer it and so does proxy ARP, that is a guest of another host of the pool
    (the kernel answers a duplicate address probe, whose sender is 0.0.0.0, only for its own
    addresses). Without one, an RFC 5227 probe (``arping -D``, sender 0.0.0.0), which never
    puts an address of ours in the neighbours' caches."""

    how = ["-s", str(source)] if source is not None else ["-D"]
    argv = ["arping", *how, "-c", "1", "-w", str(ARP_TIMEOUT_S), "-I", uplink, str(ip)]
    result = run(argv, check=False, timeout_s=ARP_TIMEOUT_S + 5)
    # arping -D exits 0 when nothing answered; a plain arping with -w exits 0 on an answer.
    # Both exit 1 for the other case and 2 on an error.
    answered = {0: source is not None, 1: source is None}.get(result.returncode)
    if answered is None:
        reason = (result.stderr or result.stdout).strip().splitlines()
        raise HostError(
            f"probing {ip} on {uplink} failed (arping exited {result.returncode}"
            f"{': ' + reason[0] if reason else ''})"
        )
    if answered:
        macs = sorted(set(re.findall(r"\[([0-9A-Fa-f:]{17})\]", result.stdout)))
        who = f" from {', '.join(macs)}" if macs else ""
        raise StateError(f"{ip} answers ARP on {uplink}{who}: another machine uses it")
    kind = f"request from {source}" if source is not None else "RFC 5227 probe from 0.0.0.0"
    return f"no answer to ARP for {ip} on {uplink} within {ARP_TIMEOUT_S} s ({kind})"
