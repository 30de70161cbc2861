"""The ruleset model rendered as an ``iptables-restore --noflush`` file (chains ``VSTOOLS-FWD``,
``VSTOOLS-IN``, ``VSTOOLS-OUT`` hooked from the built-in ones, ``vs<CONTEXT>-in|out`` per guest)
and as structured rules for python-iptables: two renderings of the same thing. Pure, as
vstools.firewall.render is for nftables."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from vstools.config.firewall import PortRange, Proto
from vstools.firewall.model import GuestFirewall, Ruleset, Verdict, Way

# -- iptables ----------------------------------------------------------------------------------

IPT_FORWARD, IPT_INPUT, IPT_OUTPUT = "VSTOOLS-FWD", "VSTOOLS-IN", "VSTOOLS-OUT"
IPT_HOOKS = (("FORWARD", IPT_FORWARD), ("INPUT", IPT_INPUT), ("OUTPUT", IPT_OUTPUT))
IPT_LOG_PREFIX_MAX = 28


@dataclass(frozen=True, slots=True)
class IptRule:
    """One iptables rule, structured so that iptables-restore text and python-iptables are
    two renderings of the same thing."""

    chain: str
    target: str
    src: str | None = None  # "a,b" lists, "!a" negation
    dst: str | None = None
    in_if: str | None = None
    out_if: str | None = None
    proto: str | None = None
    sport: str | None = None
    dport: str | None = None
    icmp_type: str | None = None
    ctstate: str | None = None
    comment: str | None = None
    target_args: tuple[tuple[str, str], ...] = ()

    def args(self) -> list[str]:
        """The rule's iptables arguments after ``-A CHAIN``: its matches, ``-j TARGET`` and the
        target's options."""
        out: list[str] = []
        for flag, value in (("-i", self.in_if), ("-o", self.out_if), ("-s", self.src)):
            out += _neg_flag(flag, value)
        out += _neg_flag("-d", self.dst)
        if self.proto:
            out += ["-p", self.proto]
        if self.sport:
            out += ["--sport", self.sport]
        if self.dport:
            out += ["--dport", self.dport]
        if self.icmp_type:
            out += ["--icmp-type", self.icmp_type]
        if self.ctstate:
            out += ["-m", "conntrack", "--ctstate", self.ctstate]
        if self.comment:
            out += ["-m", "comment", "--comment", f'"{self.comment}"']
        out += ["-j", self.target]
        for option, value in self.target_args:
            out += [option, value]
        return out


def _neg_flag(flag: str, value: str | None) -> list[str]:
    if value is None:
        return []
    if value.startswith("!"):
        return ["!", flag, value[1:]]
    return [flag, value]


def ipt_chain(guest: GuestFirewall, way: Way) -> str:
    """The iptables chain of a guest's rules one way: the name of its veth's host end + ``-in``
    or ``-out``."""
    return f"{guest.ifname}-{way}"


def _ipt_ports(ports: PortRange | None) -> str | None:
    if ports is None:
        return None
    return str(ports.low) if ports.low == ports.high else f"{ports.low}:{ports.high}"


def _ipt_guest_rules(guest: GuestFirewall, way: Way) -> list[IptRule]:
    chain = ipt_chain(guest, way)
    ip = str(guest.ip)
    rules = [
        IptRule(chain, "RETURN", ctstate="RELATED,ESTABLISHED"),
        IptRule(chain, "DROP", ctstate="INVALID"),
        IptRule(chain, "RETURN", src=ip, dst=ip),
        IptRule(chain, "RETURN", proto="icmp", icmp_type="echo-request"),
    ]
    for rule in guest.chain(way):
        match = rule.match
        peers = ",".join(str(p) for p in match.peers) or None
        proto = None if match.proto is None else str(match.proto)
        target, args = "RETURN", tuple[tuple[str, str], ...]()
        if rule.verdict is Verdict.REJECT:
            target = "REJECT"
            args = (("--reject-with", "tcp-reset"),) if match.proto is Proto.TCP else ()
        rules.append(
            IptRule(
                chain,
                target,
                src=peers if way is Way.IN else None,
                dst=peers if way is Way.OUT else None,
                proto=proto,
                sport=_ipt_ports(match.sport),
                dport=_ipt_ports(match.dport),
                icmp_type=None if match.icmp_type is None else str(match.icmp_type),
                comment=f"{guest.name} line {rule.source.line}",
                target_args=args,
            )
        )
    if guest.log:
        prefix = f"vs-fw {guest.name} {way}: "[:IPT_LOG_PREFIX_MAX]
        rules.append(IptRule(chain, "LOG", target_args=(("--log-prefix", f'"{prefix}"'),)))
    rules += [
        IptRule(chain, "REJECT", proto="tcp", target_args=(("--reject-with", "tcp-reset"),)),
        IptRule(chain, "REJECT"),
    ]
    return rules


def iptables_rules(ruleset: Ruleset) -> tuple[list[str], list[IptRule]]:
    """Our chains (base chains first) and their rules, in order."""
    chains = [IPT_FORWARD, IPT_INPUT, IPT_OUTPUT]
    rules: list[IptRule] = []
    for guest in ruleset.guests:
        ip = str(guest.ip)
        rules += [
            IptRule(IPT_FORWARD, "DROP", in_if=guest.ifname, src="!" + ip),
            IptRule(IPT_FORWARD, "DROP", in_if="!" + guest.ifname, src=ip),
            IptRule(IPT_INPUT, "DROP", in_if=guest.ifname),
            IptRule(IPT_OUTPUT, "ACCEPT", out_if=guest.ifname, ctstate="RELATED"),
            IptRule(IPT_OUTPUT, "DROP", out_if=guest.ifname),
        ]
    for guest in ruleset.guests:
        if not guest.enabled:
            continue
        ip = str(guest.ip)
        rules += [
            IptRule(IPT_FORWARD, ipt_chain(guest, Way.OUT), src=ip),
            IptRule(IPT_FORWARD, ipt_chain(guest, Way.IN), dst=ip),
        ]
    for guest in ruleset.guests:
        if guest.enabled:
            for way in (Way.IN, Way.OUT):
                chains.append(ipt_chain(guest, way))
                rules += _ipt_guest_rules(guest, way)
    return chains, rules


def render_iptables(
    ruleset: Ruleset, stale_chains: Iterable[str] = (), missing_hooks: Iterable[str] = ()
) -> str:
    """An ``iptables-restore --noflush`` file: declaring a chain flushes it, so our chains are
    replaced in one commit while the host's own rules stay; ``stale_chains`` (guests no longer
    filtered) are flushed and deleted; ``missing_hooks`` get their jump from the built-in
    chain."""
    chains, rules = iptables_rules(ruleset)
    stale = sorted(set(stale_chains) - set(chains))
    lines = ["# vs-tools firewall (iptables-restore --noflush)", "*filter"]
    lines += [f":{chain} - [0:0]" for chain in [*chains, *stale]]
    lines += [f"-X {chain}" for chain in stale]
    hooks = dict(IPT_HOOKS)
    lines += [f"-I {builtin} 1 -j {hooks[builtin]}" for builtin in missing_hooks]
    lines += [" ".join(["-A", rule.chain, *rule.args()]) for rule in rules]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"
