"""The host-enforced firewall: compile every running guest's firewall.conf into the ruleset
model (vstools.firewall.model), render it for the configured backend (.render) and load it,
one atomic transaction per change, under a host-wide lock.

A failed load leaves the previous rules in force (the kernel applies an ``nft -f`` or an
``iptables-restore`` file whole or not at all). A guest whose firewall.conf is broken keeps what
is loaded when it is updated alone; when the whole table has to be rebuilt it is loaded
closed (nothing but replies allowed) rather than open.
"""

from __future__ import annotations

import difflib
import logging
import socket
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from ipaddress import IPv4Address

from vstools.config.firewall import FirewallConf
from vstools.config.guest import GuestConf
from vstools.config.settings import FirewallBackend, Settings
from vstools.errors import ConfigError, HostError, VSError
from vstools.firewall.backends import Backend, IptablesRestore, Nftables
from vstools.firewall.iptc import Iptc
from vstools.firewall.model import GuestFirewall, Ruleset, compile_guest
from vstools.host.fsutil import locked
from vstools.host.hostconfig import HostConfig
from vstools.net.plan import plan_network, veth_name
from vstools.runtime.state import is_running

log = logging.getLogger("vstools.firewall")


def resolve(name: str) -> tuple[IPv4Address, ...]:
    """IPv4 addresses of a name, when the rules are compiled (the plan shows them)."""
    try:
        infos = socket.getaddrinfo(name, None, family=socket.AF_INET, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise LookupError(f"{name} does not resolve: {exc}") from None
    found = sorted({IPv4Address(info[4][0]) for info in infos})
    if not found:
        raise LookupError(f"{name} has no IPv4 address")
    return tuple(found)


def compile_for(conf: GuestConf, firewall: FirewallConf | None) -> GuestFirewall:
    """One guest's rules compiled (names resolved now); ConfigError when they cannot be."""
    return compile_guest(firewall, conf.name, conf.ip, veth_name(conf.context), resolve)


def closed(guest: GuestFirewall) -> GuestFirewall:
    """A guest whose rules cannot be compiled: only replies, echo and itself pass."""
    return GuestFirewall(guest.name, guest.ip, guest.ifname, enabled=True, log=True)


def running_ruleset(host: HostConfig, *, exclude: str = "") -> tuple[Ruleset, list[str]]:
    """Every running guest that has a network, compiled from its files now; plus the problems
    of guests whose files are broken (those are loaded closed)."""
    networks = host.networks()
    create = host.create()
    guests: list[GuestFirewall] = []
    problems: list[str] = []
    for name in host.guest_names():
        if name == exclude or not is_running(host.paths.guest_run_dir(name)):
            continue
        try:
            files = host.guest(name)
        except VSError as exc:
            problems.append(f"{name}: {exc}")
            continue
        if plan_network(files.conf, networks, create) is None:
            continue
        try:
            guests.append(compile_for(files.conf, files.firewall))
        except ConfigError as exc:
            problems.append(f"{name}: {exc}")
            guests.append(closed(compile_for(files.conf, None)))
    return Ruleset(tuple(guests)), problems


def backend_for(settings: Settings) -> Backend:
    """The backend FIREWALL_BACKEND names in vs-tools.conf."""
    if settings.firewall_backend is FirewallBackend.IPTABLES_RESTORE:
        return IptablesRestore()
    if settings.firewall_backend is FirewallBackend.IPTC:
        return Iptc()
    return Nftables()


@dataclass
class Firewall:
    """The host's firewall as the commands use it; every change under one host-wide lock."""

    host: HostConfig

    def __post_init__(self) -> None:
        self.backend = backend_for(self.host.settings)

    def _locked(self, what: str) -> AbstractContextManager[None]:
        return locked(self.host.paths.run_dir / "firewall.lock", what=what, timeout_s=120.0)

    def _others(self, guest: GuestFirewall) -> Callable[[], Ruleset]:
        def full() -> Ruleset:
            """Every other running guest's rules, compiled now; a guest whose files are broken is
            logged and loaded closed."""
            ruleset, problems = running_ruleset(self.host, exclude=guest.name)
            for problem in problems:
                log.warning("firewall: %s (loaded closed)", problem)
            return ruleset

        return full

    def put(self, guest: GuestFirewall) -> str:
        """Load one guest's rules: its chains and its always-on isolation."""
        with self._locked(f"firewall of {guest.name}"):
            others = self._others(guest)
            text = self.backend.apply(lambda: others().replace(guest), [guest], [])
        log.info("firewall: %s loaded (%s)", guest.name, self.backend.name)
        return text

    def remove(self, guest: GuestFirewall, *, keep_isolation: bool = False) -> str:
        """Take one guest's chains out and, unless ``keep_isolation``, its membership of the
        always-on isolation (a stopped guest has no interface left)."""
        with self._locked(f"firewall of {guest.name}"):
            others = self._others(guest)
            if keep_isolation:
                opened = GuestFirewall(guest.name, guest.ip, guest.ifname)
                return self.backend.apply(lambda: others().replace(opened), [opened], [])
            return self.backend.apply(others, [], [guest])

    def load_all(self) -> tuple[str, list[str]]:
        """Replace everything with the rules of every running guest, at once."""
        with self._locked("whole firewall"):
            full, problems = running_ruleset(self.host)
            text = self.backend.apply(lambda: full, full.guests, [], refresh=True)
        return text, problems

    def plan(self, guests: Iterable[GuestFirewall] = ()) -> tuple[str, str, Ruleset]:
        """(what would be loaded, its diff with what is loaded, the ruleset)."""
        full, problems = running_ruleset(self.host)
        chosen = list(guests)
        for guest in chosen:
            full = full.replace(guest)
        for problem in problems:
            log.warning("firewall: %s (would be loaded closed)", problem)
        if isinstance(self.backend, Nftables) and chosen:
            text = self.backend.transaction(lambda: full, chosen, [])
        else:
            text = self.backend.render(full)
        try:
            wanted = self.backend.listing_of(full)
        except HostError as exc:
            raise HostError(f"the planned ruleset does not load: {exc}") from None
        loaded = self.backend.listing()
        diff = "".join(
            difflib.unified_diff(
                loaded.splitlines(keepends=True),
                wanted.splitlines(keepends=True),
                "loaded",
                "planned",
            )
        )
        return text, diff, full

    def status(self, guest: GuestFirewall) -> tuple[bool, bool]:
        """The backend's ``status``: whether the guest's inbound and outbound chains are loaded."""
        return self.backend.status(guest)
