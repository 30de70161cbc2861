"""networks.conf: the networks guests may live in, one per line, identical on every host.

Two forms are read, detected per line: the slides' ``vlan,network/prefix,gateway[,domain[,ns ns]]``
and the original code's ``vlan:network/prefix:gateway[:ns:domain]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network
from typing import ClassVar

from vstools.config.lexer import (
    Collector,
    SourceRef,
    Token,
    check_ascii_printable,
    iter_lines,
    parse_token,
    split_on,
    strip_comment,
)
from vstools.config.values import (
    parse_hostname,
    parse_ipv4,
    parse_ipv4_list,
    parse_ipv4_network,
    parse_uint,
)
from vstools.errors import Problem

MAX_VLAN = 4094


class NetworkForm(StrEnum):
    """Which of the two forms a line was written in (rendering always writes the comma form)."""

    COMMA = "comma"  # the slides' form
    COLON = "colon"  # the original code's form


@dataclass(frozen=True, slots=True)
class Network:
    """One network of networks.conf: its VLAN, network, gateway and optional domain and
    nameservers; ``source`` and ``form`` are not part of equality."""

    vlan: int
    network: IPv4Network
    gateway: IPv4Address
    domain: str | None = None
    nameservers: tuple[IPv4Address, ...] = ()
    source: SourceRef = field(default=SourceRef("", 0), compare=False)
    form: NetworkForm = field(default=NetworkForm.COMMA, compare=False)


@dataclass(frozen=True, slots=True)
class NetworksConf:
    """networks.conf's model: the networks in file order (no two overlap or share a VLAN)."""

    FILE_NAME: ClassVar[str] = "networks.conf"

    networks: tuple[Network, ...]
    path: str = field(default="", compare=False)
    warnings: tuple[Problem, ...] = field(default=(), compare=False)

    def network_for(self, ip: IPv4Address) -> Network | None:
        """The network that contains ``ip`` (networks never overlap, so at most one)."""
        for net in self.networks:
            if ip in net.network:
                return net
        return None

    def by_vlan(self, vlan: int) -> Network | None:
        """The network of VLAN ``vlan`` (one per VLAN), or None when there is none."""
        for net in self.networks:
            if net.vlan == vlan:
                return net
        return None


def _strip(token: Token) -> Token:
    text = token.text.lstrip(" \t")
    col = token.col + len(token.text) - len(text)
    return Token(text.rstrip(" \t"), col)


def _parse_line(line: str, number: int, out: Collector) -> Network | None:
    body = strip_comment(line)
    whole = Token(body, 1)
    comma, colon = body.find(","), body.find(":")
    # The form is the one whose separator comes first: the colon form's nameserver field may
    # itself hold commas.
    if comma >= 0 and (colon < 0 or comma < colon):
        form, parts = NetworkForm.COMMA, [_strip(t) for t in split_on(whole, ",")]
    elif colon >= 0:
        form, parts = NetworkForm.COLON, [_strip(t) for t in split_on(whole, ":")]
    else:
        first = _strip(whole)
        out.error(
            number,
            first.col,
            "expected vlan_id,network/prefix,gateway[,domain[,nameserver"
            " ...]] (or the colon form vlan_id:network/prefix:gateway[:nameserver:domain])",
        )
        return None
    if not 3 <= len(parts) <= 5:
        out.error(
            number,
            parts[5].col if len(parts) > 5 else 1,
            f"expected 3 to 5 fields, found {len(parts)}",
        )
        return None
    errors_before = len(out.problems)
    vlan = parse_token(
        parts[0], lambda t: parse_uint(t, maximum=MAX_VLAN, what="VLAN id"), number, out
    )
    net = parse_token(parts[1], lambda t: parse_ipv4_network(t, allow_bare=False), number, out)
    gateway = parse_token(parts[2], parse_ipv4, number, out)
    domain_token: Token | None
    ns_token: Token | None
    if form is NetworkForm.COMMA:
        domain_token = parts[3] if len(parts) > 3 else None
        ns_token = parts[4] if len(parts) > 4 else None
    else:
        ns_token = parts[3] if len(parts) > 3 else None
        domain_token = parts[4] if len(parts) > 4 else None
    domain = None
    if domain_token is not None and domain_token.text:
        domain = parse_token(domain_token, parse_hostname, number, out)
    nameservers: tuple[IPv4Address, ...] | None = ()
    if ns_token is not None and ns_token.text:
        nameservers = parse_token(ns_token, parse_ipv4_list, number, out)
    if len(out.problems) != errors_before:
        return None
    if vlan is None or net is None or gateway is None or nameservers is None:
        return None
    if gateway not in net or (
        net.prefixlen < 31 and gateway in (net.network_address, net.broadcast_address)
    ):
        out.error(number, parts[2].col, f"gateway {gateway} is not a host address of {net}")
        return None
    return Network(vlan, net, gateway, domain, nameservers, SourceRef(out.path, number), form)


def parse_networks(path: str, text: str) -> NetworksConf:
    """Parse networks.conf text; raises ConfigError listing every bad line."""
    out = Collector(path)
    networks: list[Network] = []
    for number, line in iter_lines(text):
        if not check_ascii_printable(line, number, out):
            continue
        if not strip_comment(line).strip():
            continue
        net = _parse_line(line, number, out)
        if net is None:
            continue
        for other in networks:
            if net.network.overlaps(other.network):
                col = line.find(str(net.network.network_address)) + 1
                out.error(
                    number,
                    max(col, 1),
                    f"{net.network} overlaps {other.network} "
                    f"(line {other.source.line}): a guest's network must be unambiguous",
                )
                break
            if net.vlan == other.vlan:
                out.error(
                    number,
                    len(line) - len(line.lstrip()) + 1,
                    f"VLAN {net.vlan} is already used by {other.network} (line "
                    f"{other.source.line}): one network per VLAN, each VLAN has one routing"
                    " table and one gateway",
                )
                break
        else:
            networks.append(net)
    out.raise_if_errors()
    return NetworksConf(tuple(networks), path, tuple(out.warnings))


def render_networks(conf: NetworksConf) -> str:
    """networks.conf text in the slides' form (the one we document)."""
    lines = ["# vlan_id,network/prefix,gateway[,domain[,nameserver nameserver ...]]"]
    for net in conf.networks:
        fields = [str(net.vlan), str(net.network), str(net.gateway)]
        if net.domain or net.nameservers:
            fields.append(net.domain or "")
        if net.nameservers:
            fields.append(" ".join(str(ns) for ns in net.nameservers))
        lines.append(",".join(fields))
    return "\n".join(lines) + "\n"
