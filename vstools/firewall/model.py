"""The firewall's one ruleset model, compiled from each guest's firewall.conf (DESIGN §3, §7).

Every backend (nftables, iptables-restore, python-iptables) renders this model and nothing else,
so their meaning cannot drift apart. The model keeps, for every rule, the firewall.conf line it
came from, and the addresses an FQDN resolved to, so the plan can show both.

Meaning of a guest's chains, evaluated for a packet to the guest (``inbound``) or from it
(``outbound``), first match wins:

1. connection tracking: ESTABLISHED/RELATED accepted, INVALID dropped;
2. the guest to itself accepted, ICMP echo requests accepted;
3. the guest's rules in file order: ``allow`` accepts, ``deny`` rejects;
4. everything else rejected (and logged when the file says ``log``).

A guest without ``enable`` has no chains. Always on, for every running guest: packets between
the host and its guests are dropped both ways, a guest may only send from its own address, and
a guest's address is only accepted from its own interface (anti-spoofing).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network

from vstools.config.firewall import (
    Action,
    Direction,
    FirewallConf,
    PortRange,
    PortSide,
    Proto,
    Rule,
)
from vstools.config.lexer import SourceRef
from vstools.errors import ConfigError, Problem

Resolver = Callable[[str], tuple[IPv4Address, ...]]
ANYWHERE = IPv4Network("0.0.0.0/0")


class Verdict(StrEnum):
    """What a compiled rule does with a packet it matches."""

    ACCEPT = "accept"
    REJECT = "reject"


class Way(StrEnum):
    """Which of a guest's two chains: packets to the guest or from it."""

    IN = "in"  # to the guest
    OUT = "out"  # from the guest


@dataclass(frozen=True, slots=True)
class Match:
    """What one compiled rule matches besides the guest's own address. Empty ``peers`` means
    any address; ``proto`` None means any protocol."""

    peers: tuple[IPv4Network, ...] = ()
    proto: Proto | None = None
    sport: PortRange | None = None
    dport: PortRange | None = None
    icmp_type: int | None = None


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A firewall.conf rule compiled for one service (and one port side), with its line and text."""

    verdict: Verdict
    match: Match
    source: SourceRef = field(default=SourceRef("", 0), compare=False)
    text: str = field(default="", compare=False)  # the firewall.conf rule, for comments


@dataclass(frozen=True, slots=True)
class GuestFirewall:
    """One running guest as the firewall sees it."""

    name: str
    ip: IPv4Address
    ifname: str  # the host end of the guest's veth
    enabled: bool = False
    log: bool = False
    inbound: tuple[CompiledRule, ...] = ()
    outbound: tuple[CompiledRule, ...] = ()
    resolved: tuple[tuple[str, tuple[IPv4Address, ...]], ...] = ()

    def chain(self, way: Way) -> tuple[CompiledRule, ...]:
        """The guest's compiled rules for packets going ``way``, in file order."""
        return self.inbound if way is Way.IN else self.outbound


@dataclass(frozen=True, slots=True)
class Ruleset:
    """Every running guest, sorted by name: what the host loads."""

    guests: tuple[GuestFirewall, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "guests", tuple(sorted(self.guests, key=lambda g: g.name)))

    def guest(self, name: str) -> GuestFirewall | None:
        """The guest named ``name``, or None when it is not in the ruleset."""
        for guest in self.guests:
            if guest.name == name:
                return guest
        return None

    def replace(self, guest: GuestFirewall) -> Ruleset:
        """A new ruleset with ``guest`` in place of the guest of that name (added when absent)."""
        others = [g for g in self.guests if g.name != guest.name]
        return Ruleset((*others, guest))

    def without(self, name: str) -> Ruleset:
        """A new ruleset without the guest named ``name``."""
        return Ruleset(tuple(g for g in self.guests if g.name != name))


def _peers(
    rule: Rule, resolve: Resolver, resolved: dict[str, tuple[IPv4Address, ...]]
) -> tuple[IPv4Network, ...]:
    networks: list[IPv4Network] = []
    for address in rule.addresses:
        if address.network is not None:
            if address.network == ANYWHERE:
                return ()  # anywhere: no address match at all
            networks.append(address.network)
            continue
        name = str(address.hostname)
        if name not in resolved:
            resolved[name] = resolve(name)
        networks.extend(IPv4Network(ip) for ip in resolved[name])
    return tuple(dict.fromkeys(networks))


def _port_matches(rule: Rule, ports: PortRange) -> list[tuple[PortRange | None, PortRange | None]]:
    """(sport, dport) pairs: a port with no side matches as source OR destination."""
    if rule.port_side is PortSide.SOURCE:
        return [(ports, None)]
    if rule.port_side is PortSide.DESTINATION:
        return [(None, ports)]
    return [(None, ports), (ports, None)]


def compile_rule(
    rule: Rule, resolve: Resolver, resolved: dict[str, tuple[IPv4Address, ...]]
) -> list[CompiledRule]:
    """One rule compiled: a rule per service (two for a port on either side). Each name is
    resolved once, kept in ``resolved``; LookupError when one does not resolve."""
    peers = _peers(rule, resolve, resolved)
    verdict = Verdict.ACCEPT if rule.action is Action.ALLOW else Verdict.REJECT
    out: list[CompiledRule] = []
    for service in rule.services:
        proto = None if service.proto is Proto.ALL else service.proto
        if service.ports is not None:
            for sport, dport in _port_matches(rule, service.ports):
                match = Match(peers, proto, sport, dport)
                out.append(CompiledRule(verdict, match, rule.source, str(rule)))
        else:
            match = Match(peers, proto, icmp_type=service.icmp_type)
            out.append(CompiledRule(verdict, match, rule.source, str(rule)))
    return out


def compile_guest(
    conf: FirewallConf | None, name: str, ip: IPv4Address, ifname: str, resolve: Resolver
) -> GuestFirewall:
    """One guest's chains. A name that does not resolve rejects the whole file (the previous
    rules stay loaded), with the line of the rule that names it."""
    if conf is None or not conf.enabled:
        return GuestFirewall(name, ip, ifname, log=bool(conf and conf.log))
    resolved: dict[str, tuple[IPv4Address, ...]] = {}
    inbound: list[CompiledRule] = []
    outbound: list[CompiledRule] = []
    problems: list[Problem] = []
    for rule in conf.rules:
        try:
            compiled = compile_rule(rule, resolve, resolved)
        except LookupError as exc:
            problems.append(Problem(rule.source.path, rule.source.line, 1, str(exc)))
            continue
        (inbound if rule.direction is Direction.FROM else outbound).extend(compiled)
    if problems:
        raise ConfigError(problems)
    return GuestFirewall(
        name,
        ip,
        ifname,
        enabled=True,
        log=conf.log,
        inbound=tuple(inbound),
        outbound=tuple(outbound),
        resolved=tuple(sorted(resolved.items())),
    )


def no_resolver(name: str) -> tuple[IPv4Address, ...]:
    """A Resolver that refuses every name (LookupError): names resolve only when rules compile."""
    raise LookupError(f"{name} cannot be resolved here (names are resolved when rules compile)")


def ruleset_of(guests: Iterable[GuestFirewall]) -> Ruleset:
    """The ruleset of ``guests``, sorted by name."""
    return Ruleset(tuple(guests))
