"""How one guest is attached to its network: the NetPlan (its address, network, gateway,
VLAN, uplink and host interface) computed from its guest.conf, networks.conf and create.conf,
or read back from the network.json that records it. Pure: nothing here touches the host."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import TYPE_CHECKING

from vstools.config.create import CreateConf
from vstools.config.guest import GuestConf
from vstools.config.networks import Network, NetworksConf
from vstools.errors import UsageError

if TYPE_CHECKING:
    pass


TABLE_BASE = 1000  # table of VLAN v: 1000 + v (tables 253-255 are the kernel's own)


IFNAMSIZ = 15


GUEST_IFNAME = "eth0"


NET_RECORD = "network.json"


def veth_name(context: int) -> str:
    """The host end of a guest's veth: ``vs`` + the guest's context number."""
    return f"vs{context}"


def uplink_name(device: str, vlan: int) -> str:
    """The uplink of a VLAN: ``device`` itself for VLAN 0, else ``device.VLAN``; UsageError when
    that is longer than 15 characters."""
    name = device if vlan == 0 else f"{device}.{vlan}"
    if len(name) > IFNAMSIZ:
        raise UsageError(f"uplink {name} is longer than {IFNAMSIZ} characters")
    return name


@dataclass(frozen=True, slots=True)
class NetPlan:
    """How one guest is attached: everything the three layers need."""

    name: str
    ip: IPv4Address
    network: IPv4Network
    gateway: IPv4Address
    vlan: int
    device: str  # DEFAULT_DEVICE
    mtu: int | None
    veth: str

    @property
    def uplink(self) -> str:
        """The guest's uplink interface (see ``uplink_name``)."""
        return uplink_name(self.device, self.vlan)

    @property
    def table(self) -> int:
        """The routing table of the guest's VLAN: 1000 + VLAN."""
        return TABLE_BASE + self.vlan

    @property
    def host_route(self) -> IPv4Network:
        """The guest's address as a /32, the route to its veth."""
        return IPv4Network(f"{self.ip}/32")


def plan_network(conf: GuestConf, networks: NetworksConf, create: CreateConf) -> NetPlan | None:
    """The guest's attachment, or None when no network of networks.conf holds its address (the
    guest then runs with a loopback only)."""
    network: Network | None = networks.network_for(conf.ip)
    if network is None:
        return None
    return NetPlan(
        name=conf.name,
        ip=conf.ip,
        network=network.network,
        gateway=network.gateway,
        vlan=network.vlan,
        device=create.device,
        mtu=create.mtu,
        veth=veth_name(conf.context),
    )


def plan_from_record(record: dict[str, str]) -> NetPlan:
    """The NetPlan a network.json records (to detach a guest without its configuration)."""
    mtu = record.get("mtu", "None")
    return NetPlan(
        name=record["name"],
        ip=IPv4Address(record["ip"]),
        network=IPv4Network(record["network"]),
        gateway=IPv4Address(record["gateway"]),
        vlan=int(record["vlan"]),
        device=record["device"],
        mtu=None if mtu in ("None", "") else int(mtu),
        veth=record["veth"],
    )
