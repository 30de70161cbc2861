"""The one door to netlink (pyroute2), to the per-namespace network sysctls, and to the link
layer (gratuitous ARP on a packet socket).

One socket per network namespace, opened once and reused: ``Netns()`` talks to the namespace
the process is in (the host's), ``Netns(pid=P)`` to the namespace of process P (a guest's init),
opened by entering that namespace just long enough to create the socket (a netlink socket stays
bound to the namespace it was created in). pyroute2 is imported when the first socket is
opened, so importing this module is cheap and a command that never touches the network never
pays for it; and only the part of it used here is loaded (``_iproute_class``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
import sys
import threading
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

from vstools.errors import HostError
from vstools.host.syscalls import CLONE_NEWNET, setns

MAIN_TABLE = 254
ANY_ADDRESS = str(IPv4Address(0))  # what a route or rule without RTA_DST/FRA_SRC covers
RT_PROTO_STATIC = 4
NTF_PROXY = 0x08  # <linux/neighbour.h>: a proxy (ARP) entry
ETH_P_ARP = 0x0806


_IPROUTE: list[Any] = []  # the class, once loaded


def _iproute_class() -> Any:
    """pyroute2's IPRoute class, loaded without running the package's ``__init__``.

    That ``__init__`` only gathers every part of the library under one name (0.9: conntrack,
    ndb with sqlite3, ipdb, the wireless, devlink and plan9 sockets...; 0.7: an entry-point
    scan), about half of pyroute2's import time (docs/performance.md), for nothing this module
    uses: the package is registered as an empty module with its real search path, so
    ``pyroute2.iproute.linux`` and what it needs load as usual, by their own imports. A later
    ``from pyroute2 import X`` in the same process would find that empty module: this module is
    the toolkit's only importer of pyroute2 (tests/test_tooling.py keeps it so). Where pyroute2
    was already imported whole, or the layout is not the one known (0.7 and 0.9 have IPRoute in
    ``pyroute2.iproute.linux``), the plain import."""
    if _IPROUTE:
        return _IPROUTE[0]
    if "pyroute2" not in sys.modules:
        import importlib.util

        spec = importlib.util.find_spec("pyroute2")
        if spec is not None and spec.submodule_search_locations is not None:
            sys.modules["pyroute2"] = importlib.util.module_from_spec(spec)
            try:
                from pyroute2.iproute.linux import IPRoute
            except Exception:  # any surprise of an unknown layout: the plain import, cleanly
                for name in [name for name in sys.modules if name.startswith("pyroute2")]:
                    del sys.modules[name]
            else:
                _IPROUTE.append(IPRoute)
                return IPRoute
    from pyroute2 import IPRoute

    _IPROUTE.append(IPRoute)
    return IPRoute


def _iproute() -> Any:
    """A new pyroute2 IPRoute socket in this process's network namespace."""
    return _iproute_class()()


def preload() -> None:
    """Import pyroute2 now: a process that forks many network users (``vs-control --all
    --start``'s supervisors) pays for it once instead of once per child."""
    _iproute_class()


def NetlinkError() -> type[Exception]:  # noqa: N802 - used where the class would be
    """pyroute2's NetlinkError, loaded with pyroute2 (an ``except`` names it when it runs)."""
    _iproute_class()  # pyroute2 loaded as the sockets load it
    from pyroute2.netlink import exceptions

    return exceptions.NetlinkError  # type: ignore[no-any-return]


def attr(msg: Any, *names: str, default: Any = None) -> Any:
    """A netlink message's attribute by its full name, nested names walked in order
    (``attr(link, "IFLA_LINKINFO", "IFLA_INFO_KIND")``), ``default`` when absent. pyroute2
    0.7 (Debian 12) answers ``get`` of a full name (IFLA_MTU) with None, 0.9 with the value;
    ``get_attr`` means the same in both."""
    node = msg
    for name in names:
        node = node.get_attr(name) if node is not None else None
    return default if node is None else node


class NetworkError(HostError):
    """The kernel refused a network change; the message says which and why."""


@contextlib.contextmanager
def _refused(what: str) -> Iterator[None]:
    try:
        yield
    except NetlinkError() as exc:
        code = getattr(exc, "code", 0)
        reason = os.strerror(code) if code else str(exc)
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
    """Links, addresses, routes, rules and proxy neighbours of one network namespace.

    ``remember_links``: an interface's index, once looked up, is kept for the next request
    that names it (a guest's attach names the same few interfaces a dozen times, each lookup a
    netlink round trip), and forgotten when this object deletes it. Only for a short task
    whose interfaces nobody else removes meanwhile: an index kept after another process
    deleted its interface makes the next request fail (ENODEV), where a lookup would have
    found a new one of the same name."""

    def __init__(self, pid: int | None = None, *, remember_links: bool = False) -> None:
        self.pid = pid
        self._indices: dict[str, int] | None = {} if remember_links else None
        if pid is None:
            self.ipr = _iproute()
        else:
            with entered(pid):
                self.ipr = _iproute()

    def close(self) -> None:
        """Close the netlink socket."""
        self.ipr.close()

    def __enter__(self) -> Netns:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- links ---------------------------------------------------------------------------------

    def index(self, name: str) -> int | None:
        """The interface's index, or None when there is no interface of that name."""
        if self._indices is not None and name in self._indices:
            return self._indices[name]
        found = self.ipr.link_lookup(ifname=name)
        if not found:
            return None
        if self._indices is not None:
            self._indices[name] = int(found[0])
        return int(found[0])

    def require(self, name: str) -> int:
        """The interface's index; NetworkError when it does not exist."""
        index = self.index(name)
        if index is None:
            raise NetworkError(f"no interface {name}")
        return index

    def link_info(self, name: str) -> dict[str, Any] | None:
        """The interface's ``mtu``, whether it is ``up`` and its ``kind`` (vlan, veth...), or None
        when it does not exist."""
        index = self.index(name)
        if index is None:
            return None
        link = self.ipr.get_links(index)[0]
        return {
            "mtu": attr(link, "IFLA_MTU"),
            "up": bool(link["flags"] & 1),
            "kind": attr(link, "IFLA_LINKINFO", "IFLA_INFO_KIND"),
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
                names[index] = str(attr(self.ipr.get_links(index)[0], "IFLA_IFNAME"))
            local = attr(msg, "IFA_LOCAL") or attr(msg, "IFA_ADDRESS")
            address = f"{local}/{msg['prefixlen']}"
            found.append((names[index], IPv4Interface(address)))
        return found

    def add_vlan(self, name: str, parent: str, vlan: int, mtu: int | None) -> None:
        """Create the VLAN interface ``name`` (802.1Q id ``vlan``) on ``parent``; no ``mtu``: the
        kernel's default."""
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
        """Delete the interface; nothing if it does not exist."""
        index = self.index(name)
        if index is not None:
            if self._indices is not None:
                self._indices.pop(name, None)
            with _refused(f"deleting interface {name}"):
                self.ipr.link("del", index=index)

    def set_up(self, name: str) -> None:
        """Bring the interface up; NetworkError when it does not exist or the kernel refuses."""
        with _refused(f"bringing {name} up"):
            self.ipr.link("set", index=self.require(name), state="up")

    def add_address(self, name: str, ip: IPv4Address, prefixlen: int) -> None:
        """Add the address ``ip``/``prefixlen`` to the interface."""
        with _refused(f"adding {ip}/{prefixlen} to {name}"):
            self.ipr.addr("add", index=self.require(name), address=str(ip), prefixlen=prefixlen)

    def delete_address(self, name: str, ip: IPv4Address, prefixlen: int) -> bool:
        """Remove ``ip``/``prefixlen`` from the interface; False when the interface or the
        address is not there (a cleanup that finds nothing to do is not an error)."""
        index = self.index(name)
        if index is None or all(
            (link, str(addr.ip), addr.network.prefixlen) != (name, str(ip), prefixlen)
            for link, addr in self.addresses(name)
        ):
            return False
        with _refused(f"removing {ip}/{prefixlen} from {name}"):
            self.ipr.addr("del", index=index, address=str(ip), prefixlen=prefixlen)
        return True

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
        """Add or replace the static route to ``dst`` out of ``dev`` in ``table`` (main by default),
        through ``gateway`` if given; ``onlink``: the gateway need not be on ``dev``'s subnets."""
        spec = self._route_spec(dst, dev, table, gateway, onlink)
        with _refused(f"route {dst} dev {dev} table {table}"):
            self.ipr.route("replace", **spec)

    def route_delete(self, dst: IPv4Network, *, table: int = MAIN_TABLE) -> None:
        """Delete the route to ``dst`` in ``table``; nothing if there is none."""
        try:
            self.ipr.route("del", dst=str(dst), table=table)
        except NetlinkError() as exc:
            if getattr(exc, "code", 0) not in (errno.ESRCH, errno.ENOENT):
                raise NetworkError(f"deleting route {dst} table {table}: {exc}") from None

    def route_exists(self, dst: IPv4Network, *, table: int = MAIN_TABLE) -> bool:
        """True when ``table`` has a route to exactly ``dst`` (whatever its device or gateway)."""
        for route in self.ipr.get_routes(family=2, table=table):
            if attr(route, "RTA_TABLE", default=route["table"]) != table:
                continue
            if route["dst_len"] != dst.prefixlen:
                continue
            if str(attr(route, "RTA_DST") or ANY_ADDRESS) == str(dst.network_address):
                return True
        return False

    # -- policy rules --------------------------------------------------------------------------

    def _rules(self) -> list[Any]:
        return list(self.ipr.get_rules(family=2))

    def rule_exists(self, src: IPv4Network, table: int) -> bool:
        """True when a policy rule ``from src lookup table`` exists (whatever its priority)."""
        for rule in self._rules():
            if (
                attr(rule, "FRA_TABLE", default=rule["table"]) == table
                and rule["src_len"] == src.prefixlen
                and str(attr(rule, "FRA_SRC") or ANY_ADDRESS) == str(src.network_address)
            ):
                return True
        return False

    def rule_add(self, src: IPv4Network, table: int, priority: int) -> None:
        """Add the policy rule ``from src lookup table`` at ``priority``, unless one exists."""
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
        """Delete every policy rule ``from src lookup table``; nothing if there is none."""
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

    def announce(self, ip: IPv4Address, dev: str) -> None:
        """Tell the neighbours on ``dev`` that ``ip`` is reached through its MAC address: a
        gratuitous ARP request then reply (RFC 5227 announcements), so a router or a peer that
        still has the address at another host (a guest moved here) updates its cache at once.
        arping cannot do this (it binds to the address, which is the guest's, not this
        host's), so the frames are built here and sent on a packet socket."""
        index = self.require(dev)
        link = self.ipr.get_links(index)[0]
        mac = bytes.fromhex(str(attr(link, "IFLA_ADDRESS")).replace(":", ""))
        frames = [gratuitous_arp(mac, ip, op) for op in (1, 2)]
        context = entered(self.pid) if self.pid is not None else contextlib.nullcontext()
        with context:  # the socket belongs to the namespace it is made in
            raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        try:
            raw.bind((dev, ETH_P_ARP))
            for frame in frames:
                raw.send(frame)
        finally:
            # Closing a packet socket waits for an RCU grace period (the kernel's
            # packet_release calls synchronize_net: 10 to 20 ms here, a tenth of a start with
            # its network): the frames are sent, so it is closed beside the start, not in its way.
            threading.Thread(target=raw.close, name="packet-socket-close", daemon=True).start()

    def proxy_exists(self, ip: IPv4Address, dev: str) -> bool:
        """True when ``dev`` has a proxy ARP entry for ``ip``; False when ``dev`` does not exist."""
        index = self.index(dev)
        if index is None:
            return False
        try:
            found = self.ipr.neigh("get", dst=str(ip), ifindex=index, flags=NTF_PROXY)
        except NetlinkError() as exc:
            if getattr(exc, "code", 0) in (errno.ENOENT, errno.ESRCH):
                return False
            raise NetworkError(f"reading proxy ARP for {ip} on {dev}: {exc}") from None
        return bool(found)

    def proxy_add(self, ip: IPv4Address, dev: str) -> None:
        """Make ``dev`` answer ARP for ``ip`` (a proxy neighbour entry, replaced if present)."""
        with _refused(f"proxy ARP for {ip} on {dev}"):
            self.ipr.neigh("replace", dst=str(ip), ifindex=self.require(dev), flags=NTF_PROXY)

    def proxy_delete(self, ip: IPv4Address, dev: str) -> None:
        """Remove the proxy ARP entry for ``ip`` on ``dev``; nothing if there is none."""
        index = self.index(dev)
        if index is None or not self.proxy_exists(ip, dev):
            return
        with _refused(f"deleting proxy ARP for {ip} on {dev}"):
            self.ipr.neigh("del", dst=str(ip), ifindex=index, flags=NTF_PROXY)


def gratuitous_arp(mac: bytes, ip: IPv4Address, op: int) -> bytes:
    """A broadcast Ethernet frame carrying an ARP request (``op`` 1) or reply (2) in which
    ``ip`` is at ``mac``, sender and target alike (pure)."""
    broadcast = b"\xff" * 6
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, mac, ip.packed,
                      broadcast if op == 2 else bytes(6), ip.packed)  # fmt: skip
    return broadcast + mac + struct.pack("!H", ETH_P_ARP) + arp


def _sysctl_path(key: str) -> str:
    if ".." in key or not key.startswith("net/"):
        raise ValueError(f"not a network sysctl: {key}")
    return "/proc/sys/" + key


def sysctl_read(key: str) -> str:
    """A network sysctl of the caller's namespace, e.g. ``net/ipv4/ip_forward``."""
    with open(_sysctl_path(key)) as handle:
        return handle.read().strip()


def sysctl_write(key: str, value: str) -> None:
    """Set a network sysctl of the caller's namespace; NetworkError when the kernel refuses."""
    try:
        with open(_sysctl_path(key), "w") as handle:
            handle.write(value)
    except OSError as exc:
        raise NetworkError(f"setting {key.replace('/', '.')} = {value}: {exc.strerror}") from None
