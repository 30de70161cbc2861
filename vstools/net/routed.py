"""Routed guest networking (DESIGN §6), in three layers that ``vs-net`` shows and changes:

- **vlan**: the uplink, ``DEFAULT_DEVICE`` for VLAN 0 or ``DEFAULT_DEVICE.VLAN`` (802.1Q,
  created on demand with create.conf's MTU);
- **route**: the guest's /32 routed to its veth (main table and the network's table), proxy ARP
  for it on the uplink, and the network's policy rule ``from NETWORK lookup TABLE`` whose table
  routes the network on the uplink and defaults to its gateway;
- **fw**: the guest's chains in the host's firewall (vstools.firewall).

The guest end of the veth is created directly inside the guest's namespace as ``eth0``, with
the guest's address in its network and a default route via the network's gateway. The host end
answers ARP for everything the guest asks (proxy ARP), so all of the guest's traffic crosses the
host's forward path and its firewall. Links come up only after the firewall is loaded.

Shared parts (a network's rule and table, a VLAN uplink) are torn down only when no other
running guest uses them: each running guest records its attachment in ``network.json`` in its
run directory, under a host-wide lock.

Importing this module is cheap; netlink (pyroute2) is imported only when something changes.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict
from ipaddress import IPv4Network
from pathlib import Path
from typing import TYPE_CHECKING

from vstools.errors import StateError
from vstools.host.fsutil import atomic_write, locked
from vstools.host.netlink import MAIN_TABLE, Netns, sysctl_write
from vstools.net.plan import GUEST_IFNAME, NET_RECORD, NetPlan, uplink_name
from vstools.plan import Step, apply_steps, discard
from vstools.runtime.state import is_alive, is_running, process_start_time

if TYPE_CHECKING:
    from vstools.host.netlink import Netns

log = logging.getLogger("vstools.network")

UPLINK_MARKS = "uplinks"


# -- records of who uses what ------------------------------------------------------------------


class Registry:
    """Which running guests use which network: one ``network.json`` per running guest, read
    and written under the host-wide network lock."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    @contextlib.contextmanager
    def locked(self, what: str) -> Iterator[None]:
        """Hold the host-wide network lock for the ``with`` block (waiting up to 60 s); ``what``
        says who holds it."""

        with locked(self.run_dir / "network.lock", what=what, timeout_s=60.0):
            yield

    def _guest_dir(self, name: str) -> Path:
        return self.run_dir / "guests" / name

    def record(self, plan: NetPlan, init_pid: int = 0) -> None:
        """Write the guest's attachment, and its init (PID and start time: an attachment whose
        guest still runs after its supervisor was killed keeps counting as in use)."""

        data = {k: str(v) for k, v in asdict(plan).items()}
        if init_pid:
            data |= {"init_pid": str(init_pid), "init_start": str(process_start_time(init_pid))}
        # Runtime state, void after a reboot (RUN_DIR is a tmpfs on a host): no fsync, the
        # rename keeps it whole.
        atomic_write(
            self._guest_dir(plan.name) / NET_RECORD, json.dumps(data) + "\n", durable=False
        )

    def read(self, name: str) -> dict[str, str] | None:
        """The attachment recorded for ``name``, or None (also when it cannot be read)."""
        try:
            data = json.loads((self._guest_dir(name) / NET_RECORD).read_text())
        except (FileNotFoundError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def forget(self, name: str) -> None:
        """Delete the guest's recorded attachment; nothing happens when there is none."""
        (self._guest_dir(name) / NET_RECORD).unlink(missing_ok=True)

    def users(self, *, exclude: str) -> list[dict[str, str]]:
        """Attachments of the other guests that run: a supervisor holds their lock, or their
        init is still alive (a guest whose supervisor was killed still uses its network)."""
        found = []
        guests = self.run_dir / "guests"
        if not guests.is_dir():
            return []
        for directory in sorted(guests.iterdir()):
            if directory.name == exclude:
                continue
            record = self.read(directory.name)
            if record is None:
                continue
            init = int(record.get("init_pid", "0") or 0)
            start = int(record.get("init_start", "0") or 0)
            if is_running(directory) or is_alive(init, start):
                found.append(record)
        return found

    def user_of(self, key: str, value: str, *, exclude: str) -> str | None:
        """The other running guest whose attachment has ``key`` = ``value``, if any."""
        return next((u["name"] for u in self.users(exclude=exclude) if u.get(key) == value), None)

    def network_in_use(self, plan: NetPlan) -> bool:
        """Whether another running guest is in the plan's network."""
        return any(u.get("network") == str(plan.network) for u in self.users(exclude=plan.name))

    def uplink_in_use(self, uplink: str, *, exclude: str) -> bool:
        """Whether a running guest other than ``exclude`` uses ``uplink``."""
        return any(
            uplink_name(u["device"], int(u["vlan"])) == uplink for u in self.users(exclude=exclude)
        )

    def mark_uplink(self, uplink: str) -> None:
        """Record that the toolkit created ``uplink``, so that it may delete it later."""
        marks = self.run_dir / UPLINK_MARKS
        marks.mkdir(parents=True, exist_ok=True)
        (marks / uplink).touch()

    def created_uplink(self, uplink: str) -> bool:
        """Whether the toolkit created ``uplink``: only such uplinks are ever deleted."""
        return (self.run_dir / UPLINK_MARKS / uplink).exists()

    def unmark_uplink(self, uplink: str) -> None:
        """Forget that the toolkit created ``uplink`` (nothing happens when it was not recorded)."""
        (self.run_dir / UPLINK_MARKS / uplink).unlink(missing_ok=True)


# -- the vlan layer ----------------------------------------------------------------------------


def vlan_up(host: Netns, registry: Registry, plan: NetPlan) -> bool:
    """Make sure the uplink exists and is up; True when it was created now."""
    created = False
    if host.index(plan.uplink) is None:
        if plan.vlan == 0:
            raise StateError(f"no interface {plan.device} (DEFAULT_DEVICE in create.conf)")
        host.add_vlan(plan.uplink, plan.device, plan.vlan, plan.mtu)
        registry.mark_uplink(plan.uplink)
        created = True
        log.info("step: VLAN uplink %s created on %s", plan.uplink, plan.device)
    host.set_up(plan.uplink)
    return created


def vlan_down(host: Netns, registry: Registry, plan: NetPlan, *, exclude: str = "") -> bool:
    """Delete a VLAN uplink the toolkit created, unless a running guest still uses it. False
    when it is kept (and why is logged)."""
    if plan.vlan == 0:
        log.info("uplink %s is DEFAULT_DEVICE itself: never torn down", plan.uplink)
        return False
    if registry.uplink_in_use(plan.uplink, exclude=exclude):
        log.info("uplink %s kept: a running guest uses it", plan.uplink)
        return False
    if not registry.created_uplink(plan.uplink):
        log.info("uplink %s kept: vs-tools did not create it", plan.uplink)
        return False
    host.delete_link(plan.uplink)
    registry.unmark_uplink(plan.uplink)
    return True


# -- the route layer ---------------------------------------------------------------------------


def route_up(host: Netns, plan: NetPlan) -> None:
    """The network's shared part, then the guest's own (network_up, own_route_up)."""
    network_up(host, plan)
    own_route_up(host, plan)


def network_up(host: Netns, plan: NetPlan) -> None:
    """What the guests of a network share, under the network lock: forwarding on, the
    network's table (its subnet on the uplink, its default via the gateway) and its policy
    rule. Each is made only when missing, so this is the same whoever comes first."""
    sysctl_write("net/ipv4/ip_forward", "1")
    host.route_replace(plan.network, plan.uplink, table=plan.table)
    host.route_replace(
        IPv4Network("0.0.0.0/0"), plan.uplink, table=plan.table, gateway=plan.gateway, onlink=True
    )
    host.rule_add(plan.network, plan.table, priority=plan.table)


def own_route_up(host: Netns, plan: NetPlan) -> None:
    """The guest's own part (its record keeps it its own; no lock needed): proxy ARP on its
    veth, the veth up, its /32 routed to it (main table and the network's), proxy ARP for it
    on the uplink, and an announcement."""
    sysctl_write(f"net/ipv4/conf/{plan.veth}/proxy_arp", "1")
    host.set_up(plan.veth)  # routes need the link up; the firewall is loaded already
    for table in (MAIN_TABLE, plan.table):
        host.route_replace(plan.host_route, plan.veth, table=table)
    host.proxy_add(plan.ip, plan.uplink)
    try:  # a guest that ran elsewhere a moment ago (vs-move): neighbours learn it is here
        host.announce(plan.ip, plan.uplink)
    except OSError as exc:
        log.warning("announcing %s on %s: %s", plan.ip, plan.uplink, exc)


def route_down(host: Netns, registry: Registry, plan: NetPlan) -> None:
    """The guest's own part, then the network's shared one (own_route_down, network_down)."""
    own_route_down(host, registry, plan)
    network_down(host, registry, plan)


def own_route_down(host: Netns, registry: Registry, plan: NetPlan) -> None:
    """The guest's own route and proxy ARP, unless another running guest has its address (a
    stop never removes what another guest owns)."""
    owner = registry.user_of("ip", str(plan.ip), exclude=plan.name)
    if owner is not None:
        log.warning("route and proxy ARP of %s kept: the running guest %s has it", plan.ip, owner)
        return
    host.proxy_delete(plan.ip, plan.uplink)
    for table in (MAIN_TABLE, plan.table):
        host.route_delete(plan.host_route, table=table)


def network_down(host: Netns, registry: Registry, plan: NetPlan) -> None:
    """Under the network lock: the network's rule and table, when no other running guest is
    in that network."""
    if registry.network_in_use(plan):
        log.info("network %s kept: another running guest is in it", plan.network)
        return
    host.rule_delete(plan.network, plan.table, priority=plan.table)
    host.route_delete(IPv4Network("0.0.0.0/0"), table=plan.table)
    host.route_delete(plan.network, table=plan.table)


def route_is_up(host: Netns, plan: NetPlan) -> bool:
    """Whether the guest's route in its network's table, the network's rule and the proxy ARP
    entry all exist."""
    return (
        host.route_exists(plan.host_route, table=plan.table)
        and host.rule_exists(plan.network, plan.table)
        and host.proxy_exists(plan.ip, plan.uplink)
    )


# -- attach and detach at start and stop -------------------------------------------------------


def _guest_address(guest: Netns, plan: NetPlan) -> None:
    guest.add_address(GUEST_IFNAME, plan.ip, plan.network.prefixlen)
    guest.set_up("lo")


def _guest_up(guest: Netns, plan: NetPlan) -> None:
    guest.set_up(GUEST_IFNAME)
    guest.route_replace(IPv4Network("0.0.0.0/0"), GUEST_IFNAME, gateway=plan.gateway, onlink=True)


def attach(
    plan: NetPlan,
    init_pid: int,
    registry: Registry,
    load_firewall: Callable[[], None],
    unload_firewall: Callable[[], None],
) -> None:
    """Wire a starting guest (its init waits for the go): every step or none. The firewall is
    loaded before any link comes up (catalogue F15).

    Only what guests share is done under the host-wide network lock, each step taking it: the
    check that the address and interface are nobody else's with the record that makes them
    this guest's (one hold), the uplink, the network's table and rule. The guest's own veth,
    address, firewall and routes follow outside it (the firewall has its own lock), so starts
    in parallel overlap (``--all --start``): its record, written first, keeps them its own
    and keeps a stopping guest from tearing the network down under it."""

    # One socket per namespace; the interfaces it names are the guest's own (its record keeps
    # them so) and the uplink, which no one removes while the record counts this guest a user.
    with (
        Netns(remember_links=True) as host,
        Netns(pid=init_pid, remember_links=True) as guest,
    ):
        created: list[bool] = []

        def held(action: Callable[[], None], what: str) -> Callable[[], None]:
            """``action`` under the network lock."""

            def run() -> None:
                """Take the lock, act, release it."""
                with registry.locked(f"{what} {plan.name}"):
                    action()

            return run

        def claim() -> None:
            """Refuse what a running guest has, then record this guest as a user: first, so
            that whatever is done is known if this process is killed halfway."""
            check_attachable(host, registry, plan)
            registry.record(plan, init_pid)

        def uplink_up() -> None:
            """Bring the uplink up, remembering whether this created it."""
            created.append(vlan_up(host, registry, plan))

        def uplink_undo() -> None:
            """Delete the uplink if this attach created it and no other running guest uses it."""
            if created and created[0]:
                vlan_down(host, registry, plan, exclude=plan.name)

        def unclaim() -> None:
            """Forget the record (the claim's undo)."""
            registry.forget(plan.name)

        steps = [
            Step(
                f"record {plan.name} as a user of {plan.network}",
                held(claim, "attach"),
                held(unclaim, "attach undo"),
            ),
            Step(
                f"uplink {plan.uplink} up",
                held(uplink_up, "attach"),
                held(uplink_undo, "attach undo"),
            ),
            Step(
                f"rule from {plan.network} lookup {plan.table}, its table",
                held(lambda: network_up(host, plan), "attach"),
                held(lambda: network_down(host, registry, plan), "attach undo"),
            ),
            Step(
                f"veth {plan.veth} on the host, {GUEST_IFNAME} inside {plan.name}",
                lambda: host.add_veth_into(plan.veth, init_pid, GUEST_IFNAME, plan.mtu),
                lambda: host.delete_link(plan.veth),
            ),
            Step(
                f"address {plan.ip}/{plan.network.prefixlen} on {plan.name}'s {GUEST_IFNAME}",
                lambda: _guest_address(guest, plan),
            ),
            Step(f"firewall of {plan.name} loaded", load_firewall, unload_firewall),
            Step(
                f"{plan.veth} up, route {plan.ip}/32 via it, proxy ARP on {plan.uplink}",
                lambda: own_route_up(host, plan),
                lambda: own_route_down(host, registry, plan),
            ),
            Step(
                f"{plan.name}'s {GUEST_IFNAME} up, default route via {plan.gateway}",
                lambda: _guest_up(guest, plan),
            ),
        ]
        apply_steps(steps)


def check_attachable(host: Netns, registry: Registry, plan: NetPlan) -> None:
    """Read-only, under the network lock: refuse an address or a host interface that a running
    guest has (two guest.conf files edited to the same IP, catalogue A6; the same context
    number gives the same interface). An interface of that name that no running guest has is
    what a killed supervisor left: it is removed."""
    users = registry.users(exclude=plan.name)  # one reading of the records for both checks
    for key, value, what in (
        ("ip", str(plan.ip), f"the address {plan.ip}"),
        ("veth", plan.veth, f"the interface {plan.veth} (the same context number)"),
    ):
        owner = next((u["name"] for u in users if u.get(key) == value), None)
        if owner is not None:
            raise StateError(
                f"guest {plan.name}: {what} is the running guest {owner}'s: refused"
                " (vs-check reports the duplicate)"
            )
    if host.index(plan.veth) is not None:
        log.info("step: interface %s left by a guest that is gone: removed", plan.veth)
        host.delete_link(plan.veth)


def detach(plan: NetPlan, registry: Registry, unload_firewall: Callable[[], None]) -> list[str]:
    """Unwire a stopped guest; returns what could not be undone (each is also logged). Every
    part is attempted whatever the others did. The guest's own parts go first, outside the
    network lock, its record still keeping them its own; then, under the lock, the record and
    what no other running guest uses any more (the network's rule and table, a VLAN)."""

    problems: list[str] = []

    def attempt(what: str, action: Callable[[], None]) -> None:
        """Run ``action``; a failure is noted and logged, and the detach goes on."""
        try:
            action()
        except Exception as exc:  # each layer is undone whatever the others did
            problems.append(f"{what}: {exc}")
            log.error("detach %s: %s: %s", plan.name, what, exc)

    with Netns() as host:
        attempt("firewall", unload_firewall)
        attempt("route", lambda: own_route_down(host, registry, plan))
        attempt("veth", lambda: host.delete_link(plan.veth))
        with registry.locked(f"detach {plan.name}"):
            registry.forget(plan.name)
            attempt("route", lambda: network_down(host, registry, plan))
            attempt("vlan", lambda: discard(vlan_down(host, registry, plan, exclude=plan.name)))
    return problems


# -- is a new guest's address free? (vs-create) ------------------------------------------------
