"""What ``vs-net`` does to one guest: show its three network layers, bring one up or down,
and plan the firewall. The layers themselves live in vstools.net and vstools.firewall."""

from __future__ import annotations

from dataclasses import dataclass

from vstools.config.settings import NetworkMode
from vstools.errors import StateError
from vstools.firewall.host import Firewall, compile_for
from vstools.firewall.model import GuestFirewall
from vstools.host.hostconfig import GuestFiles, HostConfig
from vstools.host.netlink import Netns
from vstools.net.plan import NetPlan, plan_network
from vstools.net.routed import Registry, route_down, route_is_up, route_up, vlan_down, vlan_up
from vstools.runtime.state import is_running

UP, DOWN, OFF, NONE = "up", "down", "off", "-"


@dataclass(frozen=True, slots=True)
class NetRow:
    """One vs-net output row: each layer up, down, off or - (no network holds the guest)."""

    vserver: str
    ip: str
    vlan: str
    route: str
    fw_in: str
    fw_out: str


@dataclass
class GuestNet:
    """One guest as vs-net sees it."""

    host: HostConfig
    name: str
    firewall: Firewall | None = None  # shared by the guests of one command

    def __post_init__(self) -> None:
        host = self.host
        self.files: GuestFiles = host.guest(self.name)
        self.plan: NetPlan | None = None
        if host.settings.network is NetworkMode.ROUTED:
            self.plan = plan_network(self.files.conf, host.networks(), host.create())
        self.registry = Registry(host.paths.run_dir)
        self.fw_host = self.firewall or Firewall(host)

    @property
    def running(self) -> bool:
        """Whether the guest runs (its supervisor holds the lock)."""
        return is_running(self.host.paths.guest_run_dir(self.name))

    def rules(self) -> GuestFirewall:
        """The guest's firewall.conf compiled now (names resolved now)."""
        return compile_for(self.files.conf, self.files.firewall)

    def _plan(self) -> NetPlan:
        if self.host.settings.network is NetworkMode.NONE:
            raise StateError("NETWORK=none in vs-tools.conf: guests have no network here")
        if self.plan is None:
            raise StateError(
                f"guest {self.name}: no network of networks.conf holds {self.files.conf.ip}"
            )
        return self.plan

    def _require_running(self, layer: str) -> None:
        if not self.running:
            raise StateError(
                f"guest {self.name} is not running: its {layer} comes up when it starts"
            )

    # -- show ----------------------------------------------------------------------------------

    def row(self) -> NetRow:
        """The guest's layers as they are now; all - when no network of networks.conf holds it."""
        ip = str(self.files.conf.ip)
        if self.plan is None:
            return NetRow(self.name, ip, NONE, NONE, NONE, NONE)
        with Netns() as host:
            info = host.link_info(self.plan.uplink)
            vlan = UP if info and info["up"] else DOWN
            route = UP if self.running and route_is_up(host, self.plan) else DOWN
        if not self.files.firewall.enabled:
            fw_in = fw_out = OFF
        else:
            rules = compile_for(self.files.conf, None)  # status needs no name resolution
            loaded_in, loaded_out = self.fw_host.status(rules)
            fw_in, fw_out = (UP if loaded_in else DOWN), (UP if loaded_out else DOWN)
        return NetRow(self.name, ip, vlan, route, fw_in, fw_out)

    # -- change --------------------------------------------------------------------------------

    def vlan(self, state: str) -> str:
        """Bring the guest's uplink up (created if missing) or down; returns what was done.
        StateError when it is kept (VLAN 0, used by a running guest, not made by vs-tools) or
        the guest has no network."""
        plan = self._plan()
        with self.registry.locked(f"vs-net vlan {plan.uplink}"), Netns() as host:
            if state == UP:
                created = vlan_up(host, self.registry, plan)
                return f"uplink {plan.uplink} {'created and ' if created else ''}up"
            if plan.vlan == 0:
                raise StateError(
                    f"{plan.uplink} carries VLAN 0: it is DEFAULT_DEVICE itself, never torn down"
                )
            if self.running or self.registry.uplink_in_use(plan.uplink, exclude=self.name):
                raise StateError(f"uplink {plan.uplink} is used by a running guest: kept")
            if not vlan_down(host, self.registry, plan, exclude=self.name):
                raise StateError(f"uplink {plan.uplink} was not created by vs-tools: kept")
            return f"uplink {plan.uplink} deleted"

    def route(self, state: str) -> str:
        """Bring the guest's route up (a running guest only) or down; returns what was done."""
        plan = self._plan()
        with self.registry.locked(f"vs-net route {self.name}"), Netns() as host:
            if state == UP:
                self._require_running("route")
                route_up(host, plan)
                self.registry.record(plan)
                return f"route to {plan.ip} up via {plan.veth}"
            self.registry.forget(self.name)
            route_down(host, self.registry, plan)
            return f"route to {plan.ip} down"

    def fw(self, state: str) -> str:
        """Load the guest's firewall (a running guest only) or take its chains out, its isolation
        kept while it runs; returns what was done."""
        self._plan()
        if state == UP:
            self._require_running("firewall")
            rules = self.rules()  # a broken file raises here: the loaded rules stay
            if not rules.enabled:
                return f"firewall of {self.name}: firewall.conf has no 'enable', nothing to load"
            self.fw_host.put(rules)
            return f"firewall of {self.name} up"
        self.fw_host.remove(compile_for(self.files.conf, None), keep_isolation=self.running)
        return f"firewall of {self.name} down (host isolation and anti-spoofing stay)"
