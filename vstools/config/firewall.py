"""firewall.conf: one guest's rules, enforced by the host alone.

    enable
    log
    <allow|deny> <from|to> <addr[,addr...]> [<from|to>] <proto[/port][,proto[/port]...]>

The first ``from``/``to`` gives the direction: ``from`` = from those addresses to the guest,
``to`` = from the guest to those addresses. The optional second one says whether the port is the
source (``from``) or the destination (``to``) port; without it the original matched either, which
we keep, with a warning. Every line is checked: a typo is an error that rejects the whole file,
never a rule silently dropped (catalogue P2).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Network
from typing import ClassVar

from vstools.config.lexer import (
    Collector,
    SourceRef,
    Token,
    ValueProblem,
    check_ascii_printable,
    iter_lines,
    parse_token,
    split_on,
    split_words,
    strip_comment,
)
from vstools.config.values import (
    looks_like_ipv4,
    parse_hostname,
    parse_ipv4_network,
    parse_uint,
)
from vstools.errors import Problem


class Action(StrEnum):
    """What a rule does with the traffic it matches."""

    ALLOW = "allow"
    DENY = "deny"  # rejected (TCP reset / ICMP unreachable), not silently dropped


class Direction(StrEnum):
    """Which way a rule's traffic goes, seen from the guest."""

    FROM = "from"  # inbound: from the listed addresses to the guest
    TO = "to"  # outbound: from the guest to the listed addresses


class PortSide(StrEnum):
    """Which port of the packet a rule's ports match: source, destination or (no keyword) either."""

    SOURCE = "from"
    DESTINATION = "to"
    EITHER = "either"  # no keyword: the original matched the port on both sides


class Proto(StrEnum):
    """A service's protocol; ``all`` is every protocol, and takes no port."""

    TCP = "tcp"
    UDP = "udp"
    ICMP = "icmp"
    ALL = "all"


@dataclass(frozen=True, slots=True)
class PortRange:
    """Ports ``low`` to ``high``, both included (equal for a single port)."""

    JSON_AS_TEXT: ClassVar[bool] = True

    low: int
    high: int

    def __str__(self) -> str:
        if self.low == self.high:
            return str(self.low)
        if self.high == 65535:
            return f"{self.low}:"
        if self.low == 1:
            return f":{self.high}"
        return f"{self.low}:{self.high}"


@dataclass(frozen=True, slots=True)
class Service:
    """``tcp/80``, ``udp/1000:2000``, ``tcp`` (every port), ``icmp``, ``icmp/8``, ``all``."""

    JSON_AS_TEXT: ClassVar[bool] = True

    proto: Proto
    ports: PortRange | None = None
    icmp_type: int | None = None

    def __str__(self) -> str:
        if self.ports is not None:
            return f"{self.proto}/{self.ports}"
        if self.icmp_type is not None:
            return f"{self.proto}/{self.icmp_type}"
        return str(self.proto)


@dataclass(frozen=True, slots=True)
class Address:
    """An IPv4 network (a /32 for one host, 0/0 for anywhere) or a name resolved at compile time."""

    JSON_AS_TEXT: ClassVar[bool] = True

    network: IPv4Network | None = None
    hostname: str | None = None

    def __str__(self) -> str:
        if self.network is None:
            return str(self.hostname)
        if self.network.prefixlen == 0:
            return "0/0"
        if self.network.prefixlen == 32:
            return str(self.network.network_address)
        return str(self.network)


@dataclass(frozen=True, slots=True)
class Rule:
    """One ``allow``/``deny`` line; ``source`` (its file and line) is not part of equality."""

    action: Action
    direction: Direction
    addresses: tuple[Address, ...]
    port_side: PortSide
    services: tuple[Service, ...]
    source: SourceRef = field(default=SourceRef("", 0), compare=False)

    def __str__(self) -> str:
        side = "" if self.port_side is PortSide.EITHER else f" {self.port_side}"
        addresses = ",".join(str(a) for a in self.addresses)
        services = ",".join(str(s) for s in self.services)
        return f"{self.action} {self.direction} {addresses}{side} {services}"


@dataclass(frozen=True, slots=True)
class FirewallConf:
    """firewall.conf's model: ``enable``, ``log`` and the rules in file order."""

    FILE_NAME: ClassVar[str] = "firewall.conf"

    enabled: bool = False
    log: bool = False
    rules: tuple[Rule, ...] = ()
    path: str = field(default="", compare=False)
    warnings: tuple[Problem, ...] = field(default=(), compare=False)


_KEYWORDS = ("allow", "deny", "enable", "log")
# Words of the grammar: a rule that has one where an address should be is missing its address.
_RESERVED = frozenset({*_KEYWORDS, "from", "to", "tcp", "udp", "icmp", "all"})
_MAX_PORT = 65535


def _suggest(word: str, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word.lower(), choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def parse_port(text: str) -> PortRange:
    """``N``, ``N:M``, ``N:`` (N and above) or ``:M`` (up to M); ports are 1-65535."""
    low_text, colon, high_text = text.partition(":")
    if not colon:
        port = parse_uint(text, minimum=1, maximum=_MAX_PORT, what="port")
        return PortRange(port, port)
    if not low_text and not high_text:
        raise ValueProblem("a port range needs at least one end (N:M, N: or :M)")
    low = parse_uint(low_text, minimum=1, maximum=_MAX_PORT, what="port") if low_text else 1
    try:
        high = (
            parse_uint(high_text, minimum=1, maximum=_MAX_PORT, what="port")
            if high_text
            else _MAX_PORT
        )
    except ValueProblem as exc:
        raise ValueProblem(exc.message, len(low_text) + 1 + exc.offset) from None
    if low > high:
        raise ValueProblem(f"port range {text} runs backwards")
    return PortRange(low, high)


def parse_service(text: str) -> Service:
    """``proto[/arg]`` (``tcp/80``, ``icmp/8``, ``all``): a port range for tcp and udp, an ICMP
    type (0-255) for icmp, nothing for all."""
    proto_text, slash, arg = text.partition("/")
    try:
        proto = Proto(proto_text)
    except ValueError:
        hint = _suggest(proto_text, tuple(p.value for p in Proto))
        raise ValueProblem(
            f"unknown protocol {proto_text!r}: tcp, udp, icmp or all{hint}"
        ) from None
    if not slash:
        return Service(proto)
    offset = len(proto_text) + 1
    try:
        if proto is Proto.ICMP:
            return Service(proto, icmp_type=parse_uint(arg, maximum=255, what="ICMP type"))
        if proto is Proto.ALL:
            raise ValueProblem("'all' takes no port")
        return Service(proto, ports=parse_port(arg))
    except ValueProblem as exc:
        raise ValueProblem(exc.message, offset + exc.offset) from None


def parse_address(text: str) -> Address:
    """An IPv4 network when the text looks like one (it must then parse as one), else a host
    name; a keyword of the grammar is refused."""
    if not text:
        raise ValueProblem("empty address")
    if text in _RESERVED:
        raise ValueProblem(f"expected addresses, found the keyword {text!r}")
    if looks_like_ipv4(text):
        return Address(network=parse_ipv4_network(text))
    return Address(hostname=parse_hostname(text))


def _parse_rule(words: list[Token], number: int, out: Collector) -> Rule | None:
    action = Action(words[0].text)
    if len(words) < 2 or words[1].text not in ("from", "to"):
        col = words[1].col if len(words) > 1 else words[0].col + len(words[0].text)
        got = f", got {words[1].text!r}" if len(words) > 1 else ""
        out.error(number, col, f"expected 'from' or 'to' after {action}{got}")
        return None
    direction = Direction(words[1].text)
    if len(words) < 3:
        out.error(
            number, words[1].col + len(words[1].text), f"expected addresses after '{direction}'"
        )
        return None
    rest = words[3:]
    side = PortSide.EITHER
    if rest and rest[0].text in ("from", "to"):
        side = PortSide(rest[0].text)
        rest = rest[1:]
    if not rest:
        last = words[-1]
        out.error(
            number,
            last.col + len(last.text),
            "expected services such as tcp/22 or udp/53,tcp/53 at the end of the rule",
        )
        return None
    if len(rest) > 1:
        out.error(
            number,
            rest[1].col,
            f"unexpected {rest[1].text!r} after the services"
            " (separate several with commas, no spaces)",
        )
        return None
    before = len(out.problems)
    addresses = [
        parse_token(piece, parse_address, number, out) for piece in split_on(words[2], ",")
    ]
    services = [parse_token(piece, parse_service, number, out) for piece in split_on(rest[0], ",")]
    if len(out.problems) != before:
        return None
    found_services = tuple(s for s in services if s is not None)
    has_ports = any(s.ports is not None for s in found_services)
    if side is PortSide.EITHER and has_ports:
        out.warn(
            number,
            rest[0].col,
            "no 'from' or 'to' before the ports: the port matches as"
            " source OR destination, as the original did; write 'to' for a destination port",
        )
    return Rule(
        action,
        direction,
        tuple(a for a in addresses if a is not None),
        side,
        found_services,
        SourceRef(out.path, number),
    )


def parse_firewall(path: str, text: str) -> FirewallConf:
    """Parse firewall.conf text; raises ConfigError listing every bad line."""
    out = Collector(path)
    enabled = log = False
    rules: list[Rule] = []
    seen_flags: dict[str, int] = {}
    for number, line in iter_lines(text):
        if not check_ascii_printable(line, number, out):
            continue
        words = split_words(strip_comment(line))
        if not words:
            continue
        keyword = words[0].text
        if keyword not in _KEYWORDS:
            out.error(
                number,
                words[0].col,
                f"unknown keyword {keyword!r}: expected allow, deny,"
                f" enable or log{_suggest(keyword, _KEYWORDS)}",
            )
            continue
        if keyword in ("enable", "log"):
            if len(words) > 1:
                out.error(number, words[1].col, f"unexpected {words[1].text!r} after {keyword}")
                continue
            if keyword in seen_flags:
                out.warn(
                    number,
                    words[0].col,
                    f"{keyword} repeated (already on line {seen_flags[keyword]})",
                )
            seen_flags[keyword] = number
            enabled = enabled or keyword == "enable"
            log = log or keyword == "log"
            continue
        rule = _parse_rule(words, number, out)
        if rule is not None:
            rules.append(rule)
    out.raise_if_errors()
    return FirewallConf(enabled, log, tuple(rules), path, tuple(out.warnings))


def render_firewall(conf: FirewallConf) -> str:
    """firewall.conf text that ``parse_firewall`` reads back to an equal model."""
    lines = []
    if conf.enabled:
        lines.append("enable")
    if conf.log:
        lines.append("log")
    lines.extend(str(rule) for rule in conf.rules)
    return "\n".join(lines) + "\n"
