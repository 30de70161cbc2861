"""The one door to netlink (pyroute2) and to the per-namespace network sysctls.

One socket per network namespace, opened once and reused: ``Netns()`` talks to the namespace
the process is in (the host's), ``Netns(pid=P)`` to the namespace of process P (a guest's init),
opened by entering that namespace just long enough to create the socket (a netlink socket stays
bound to the namespace it was created in). Importing this module costs pyroute2's import
(about 0.1 s): only the network paths import it.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ndmsg import NTF_PROXY

from vstools.errors import HostError
from vstools.syscalls import CLONE_NEWNET, setns

MAIN_TABLE = 254
ANY_ADDRESS = str(IPv4Address(0))  # what a route or rule without RTA_DST/FRA_SRC covers
RT_PROTO_STATIC = 4


class NetworkError(HostError):
    """The kernel refused a network change; the message says which and why."""


@contextlib.contextmanager
def _refused(what: str) -> Iterator[None]:
    try:
        yield
    except NetlinkError as exc:
        reason = os.strerror(exc.code) if exc.code else str(exc)
        raise NetworkError(f"{what}: {reason}") from None


@contextlib.contextmanager
def entered(pid: int) -> Iterator[None]:
    """Run the body in process ``pid``'s network namespace, then come back."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(target, CLONE_NEWNET)
        try:
            yield
        finally:
            setns(home, CLONE_NEWNET)
    finally:
        os.close(target)
        os.close(home)


class Netns:
    """Links, addresses, routes, rules and proxy neighbours of one network namespace."""

    def __init__(self, pid: int | None = None) -> None:
        self.pid = pid
        if pid is None:
            self.ipr = IPRoute()
        else:
            with entered(pid):
                self.ipr = IPRoute()

    def close(self) -> None:
        self.ipr.close()

    def __enter__(self) -> Netns:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- links ---------------------------------------------------------------------------------

    def index(self, name: str) -> int | None:
        found = self.ipr.link_lookup(ifname=name)
        return int(found[0]) if found else None

    def require(self, name: str) -> int:
        index = self.index(name)
        if index is None:
            raise NetworkError(f"no interface {name}")
        return index

    def link_info(self, name: str) -> dict[str, Any] | None:
        index = self.index(name)
        if index is None:
            return None
        link = self.ipr.get_links(index)[0]
        return {
            "mtu": link.get("IFLA_MTU"),
            "up": bool(link["flags"] & 1),
            "kind": (link.get(("IFLA_LINKINFO", "IFLA_INFO_KIND"))),
        }

    def addresses(self, name: str | None = None) -> list[tuple[str, IPv4Interface]]:
        """The IPv4 addresses of one interface, or of every interface, as (interface, address)
        pairs (read-only)."""
        spec: dict[str, Any] = {"family": 2}
        if name is not None:
            index = self.index(name)
            if index is None:
                return []
            spec["index"] = index
        names: dict[int, str] = {}
        found = []
        for msg in self.ipr.get_addr(**spec):
            index = int(msg["index"])
            if index not in names:
                names[index] = str(self.ipr.get_links(index)[0].get("IFLA_IFNAME"))
            address = f"{msg.get('IFA_LOCAL') or msg.get('IFA_ADDRESS')}/{msg['prefixlen']}"
            found.append((names[index], IPv4Interface(address)))
        return found

    def add_vlan(self, name: str, parent: str, vlan: int, mtu: int | None) -> None:
        link = self.require(parent)
        with _refused(f"creating VLAN interface {name} (802.1Q id {vlan} on {parent})"):
            extra = {"mtu": mtu} if mtu else {}
            self.ipr.link("add", ifname=name, kind="vlan", link=link, vlan_id=vlan, **extra)

    def add_veth_into(self, host_name: str, pid: int, peer_name: str, mtu: int | None) -> None:
        """A veth pair whose peer is created directly inside process ``pid``'s namespace."""
        extra = {"mtu": mtu} if mtu else {}
        with _refused(f"creating veth {host_name} with {peer_name} inside process {pid}"):
            self.ipr.link(
                "add",
                ifname=host_name,
                kind="veth",
                peer={"ifname": peer_name, "net_ns_pid": pid, **extra},
                **extra,
            )

    def delete_link(self, name: str) -> None:
        index = self.index(name)
        if index is not None:
            with _refused(f"deleting interface {name}"):
                self.ipr.link("del", index=index)

    def set_up(self, name: str) -> None:
        with _refused(f"bringing {name} up"):
            self.ipr.link("set", index=self.require(name), state="up")

    def add_address(self, name: str, ip: IPv4Address, prefixlen: int) -> None:
        with _refused(f"adding {ip}/{prefixlen} to {name}"):
            self.ipr.addr("add", index=self.require(name), address=str(ip), prefixlen=prefixlen)

    # -- routes --------------------------------------------------------------------------------

    def _route_spec(
        self,
        dst: IPv4Network,
        dev: str,
        table: int,
        gateway: IPv4Address | None,
        onlink: bool,
    ) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "dst": str(dst),
            "oif": self.require(dev),
            "table": table,
            "proto": RT_PROTO_STATIC,
        }
        if gateway is not None:
            spec["gateway"] = str(gateway)
        if onlink:
            spec["flags"] = ["onlink"]
        return spec

    def route_replace(
        self,
        dst: IPv4Network,
        dev: str,
        *,
        table: int = MAIN_TABLE,
        gateway: IPv4Address | None = None,
        onlink: bool = False,
    ) -> None:
        spec = self._route_spec(dst, dev, table, gateway, onlink)
        with _refused(f"route {dst} dev {dev} table {table}"):
            self.ipr.route("replace", **spec)

    def route_delete(self, dst: IPv4Network, *, table: int = MAIN_TABLE) -> None:
        try:
            self.ipr.route("del", dst=str(dst), table=table)
        except NetlinkError as exc:
            if exc.code not in (errno.ESRCH, errno.ENOENT):
                raise NetworkError(f"deleting route {dst} table {table}: {exc}") from None

    def route_exists(self, dst: IPv4Network, *, table: int = MAIN_TABLE) -> bool:
        for route in self.ipr.get_routes(family=2, table=table):
            if route.get("RTA_TABLE", route["table"]) != table:
                continue
            if route["dst_len"] != dst.prefixlen:
                continue
            if str(route.get("RTA_DST") or ANY_ADDRESS) == str(dst.network_address):
                return True
        return False

    # -- policy rules --------------------------------------------------------------------------

    def _rules(self) -> list[Any]:
        return list(self.ipr.get_rules(family=2))

    def rule_exists(self, src: IPv4Network, table: int) -> bool:
        for rule in self._rules():
            if (
                rule.get("FRA_TABLE", rule["table"]) == table
                and rule["src_len"] == src.prefixlen
                and str(rule.get("FRA_SRC") or ANY_ADDRESS) == str(src.network_address)
            ):
                return True
        return False

    def rule_add(self, src: IPv4Network, table: int, priority: int) -> None:
        if self.rule_exists(src, table):
            return
        with _refused(f"rule from {src} lookup {table}"):
            self.ipr.rule(
                "add",
                family=2,
                src=str(src.network_address),
                src_len=src.prefixlen,
                table=table,
                priority=priority,
            )

    def rule_delete(self, src: IPv4Network, table: int, priority: int) -> None:
        while self.rule_exists(src, table):
            with _refused(f"deleting rule from {src} lookup {table}"):
                self.ipr.rule(
                    "del",
                    family=2,
                    src=str(src.network_address),
                    src_len=src.prefixlen,
                    table=table,
                    priority=priority,
                )

    # -- proxy neighbours ----------------------------------------------------------------------

    def proxy_exists(self, ip: IPv4Address, dev: str) -> bool:
        index = self.index(dev)
        if index is None:
            return False
        try:
            found = self.ipr.neigh("get", dst=str(ip), ifindex=index, flags=NTF_PROXY)
        except NetlinkError as exc:
            if exc.code in (errno.ENOENT, errno.ESRCH):
                return False
            raise NetworkError(f"reading proxy ARP for {ip} on {dev}: {exc}") from None
        return bool(found)

    def proxy_add(self, ip: IPv4Address, dev: str) -> None:
        with _refused(f"proxy ARP for {ip} on {dev}"):
            self.ipr.neigh("replace", dst=str(ip), ifindex=self.require(dev), flags=NTF_PROXY)

    def proxy_delete(self, ip: IPv4Address, dev: str) -> None:
        index = self.index(dev)
        if index is None or not self.proxy_exists(ip, dev):
            return
        with _refused(f"deleting proxy ARP for {ip} on {dev}"):
            self.ipr.neigh("del", dst=str(ip), ifindex=index, flags=NTF_PROXY)


def _sysctl_path(key: str) -> str:
    if ".." in key or not key.startswith("net/"):
        raise ValueError(f"not a network sysctl: {key}")
    return "/proc/sys/" + key


def sysctl_read(key: str) -> str:
    """A network sysctl of the caller's namespace, e.g. ``net/ipv4/ip_forward``."""
    with open(_sysctl_path(key)) as handle:
        return handle.read().strip()


def sysctl_write(key: str, value: str) -> None:
    try:
        with open(_sysctl_path(key), "w") as handle:
            handle.write(value)
    except OSError as exc:
        raise NetworkError(f"setting {key.replace('/', '.')} = {value}: {exc.strerror}") from None
