"""The nftables backend's text: the ruleset model rendered as one ``nft -f`` transaction (the
whole table, a refresh of it in place, or one guest's part of it); the iptables rendering is
vstools.firewall.render_ipt. Pure: what is loaded, and how, is vstools.firewall's business.

nftables layout (table ``inet vstools``, owned by the toolkit):

- sets ``guest_ifs`` (host ends of the guests' veths), ``guest_addrs`` and ``guest_src``
  (interface . address): the always-on isolation and anti-spoofing of every running guest;
- set ``pkg_proxy`` (host interface . guest address . proxy address . proxy port, elements with
  a timeout): empty in every rendered ruleset; vs-pkg adds one element for the duration of a
  run, which lets that guest, and it alone, reach that run's package proxy on the host (the
  element expires by itself if vs-pkg dies, and any full load or refresh empties the set);
  the output chain also refuses new connections from the proxy's own uid (PKG_PROXY_UID) to
  the host's own addresses (but DNS) and to link-local ones;
- maps ``fw_in`` / ``fw_out``: guest address -> ``jump in_NAME`` / ``jump out_NAME`` for the
  guests whose firewall.conf says ``enable``, and set ``fw_guests``, their keys (the addresses
  whose invalid packets the forward chain drops), written with them in every transaction;
- base chains ``forward``, ``input``, ``output`` (policy accept: the rest of the host's
  traffic is not ours), per-guest chains ``in_NAME`` / ``out_NAME`` that ``return`` what they
  allow and reject the rest. The ``in_``/``out_`` prefix keeps guest names that are nft
  keywords (``ip``, ``drop``, ``fwd``) from ever being parsed as keywords.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from typing import ClassVar

from vstools.config.firewall import PortRange, Proto
from vstools.firewall.model import CompiledRule, GuestFirewall, Match, Ruleset, Verdict, Way

TABLE = "inet vstools"
LOG_RATE = "limit rate 10/second burst 20 packets"


def chain_name(guest: str, way: Way) -> str:
    """The nft chain of a guest's rules one way: ``in_NAME`` or ``out_NAME``."""
    return f"{way}_{guest}"


# -- nftables ----------------------------------------------------------------------------------


def _nft_ports(ports: PortRange) -> str:
    return str(ports.low) if ports.low == ports.high else f"{ports.low}-{ports.high}"


def _nft_addresses(peers: tuple[IPv4Network, ...]) -> str:
    items = [str(p.network_address) if p.prefixlen == 32 else str(p) for p in peers]
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"


# Guests made from one template share their rules: each distinct match is rendered once.
@functools.lru_cache(maxsize=4096)
def _nft_match(way: Way, match: Match) -> tuple[str, ...]:
    parts: list[str] = []
    if match.peers:
        parts.append(f"ip {'saddr' if way is Way.IN else 'daddr'} {_nft_addresses(match.peers)}")
    if match.proto in (Proto.TCP, Proto.UDP):
        if match.sport is None and match.dport is None:
            parts.append(f"meta l4proto {match.proto}")
        if match.sport is not None:
            parts.append(f"{match.proto} sport {_nft_ports(match.sport)}")
        if match.dport is not None:
            parts.append(f"{match.proto} dport {_nft_ports(match.dport)}")
    elif match.proto is Proto.ICMP:
        parts.append(
            "meta l4proto icmp" if match.icmp_type is None else f"icmp type {match.icmp_type}"
        )
    return tuple(parts)


def _comment(guest: GuestFirewall, rule: CompiledRule) -> str:
    return f'comment "{guest.name} line {rule.source.line}"'


def _nft_rule(guest: GuestFirewall, way: Way, rule: CompiledRule) -> str:
    parts = list(_nft_match(way, rule.match))
    if rule.verdict is Verdict.ACCEPT:
        parts.append("return")
    elif rule.match.proto is Proto.TCP:
        parts.append("reject with tcp reset")
    else:
        parts.append("reject")
    parts.append(_comment(guest, rule))
    return " ".join(parts)


# The checks every guest chain began with (vstools.firewall.model, steps 1 and 2), made once in
# the forward chain before the dispatch, in the same order, for the same packets: a packet meets
# them only if a verdict map would send it to a guest chain, or where their verdict is the one
# the end of the forward chain gives anyway (policy accept). ESTABLISHED/RELATED, a guest to
# itself and echo requests passed every guest chain they met (``return``) and then the end of
# the forward chain: ``accept`` here is the same verdict. INVALID was dropped by the first guest
# chain a packet met: here it is dropped when its source or destination is a filtered guest's,
# the set ``fw_guests``, which holds exactly the keys of the verdict maps (written with them, in
# the same transactions). Not a lookup of the maps themselves: Debian 12's kernel (6.1, the VM
# lab's) refuses a verdict map looked up as a set (EINVAL; 6.18 accepts it). Done once instead
# of in 2000 chains, they cut the rules of a 1000-guest table from 18000 to 8000 (issue 17: the
# kernel's and nft's time grow with the number of rules).
FW_GUESTS = "fw_guests"
DISPATCH_CHECKS = (
    "ct state established,related accept",
    f"ct state invalid ip saddr @{FW_GUESTS} drop",
    f"ct state invalid ip daddr @{FW_GUESTS} drop",
    "ip saddr . ip daddr @guest_self accept",
    "icmp type echo-request accept",
)
# What every guest chain ends with (step 4), shared: guest chains ``goto`` it.
REJECT_REST = "reject_rest"
REJECT_REST_RULES = ("meta l4proto tcp reject with tcp reset", "reject")


def guest_chain_rules(guest: GuestFirewall, way: Way) -> list[str]:
    """The rules of ``in_NAME`` or ``out_NAME``, in order (see vstools.firewall.model for
    meaning): the guest's own rules, its log, then the shared reject (the checks common to all
    guests are made before the dispatch, ``DISPATCH_CHECKS``)."""
    rules = [_nft_rule(guest, way, rule) for rule in guest.chain(way)]
    if guest.log:
        rules.append(f'{LOG_RATE} log prefix "vs-fw {guest.name} {way}: " level info')
    rules.append(f"goto {REJECT_REST}")
    return rules


def chain_digest(guest: GuestFirewall, way: Way) -> str:
    """The digest of a guest chain's rules. It is kept as the comment (``vst:DIGEST``) of the
    verdict-map element that jumps to the chain: a refresh compares it instead of listing every
    rule of the table. (Not as the chain's own comment: the kernel cannot change that without
    deleting the chain, and a chain deleted and made anew in one transaction lets packets
    through while the kernel commits it, catalogue F14.)"""
    return _digest(guest_chain_rules(guest, way))


def _digest(rules: list[str]) -> str:
    return hashlib.sha256("\n".join(rules).encode()).hexdigest()[:16]


DIGEST_PREFIX = "vst:"


@dataclass(frozen=True, slots=True)
class _Chain:
    """A guest chain as rendered: its rules and their digest."""

    guest: GuestFirewall
    way: Way
    rules: list[str]
    digest: str


def _guest_chains(ruleset: Ruleset) -> dict[str, _Chain]:
    """Every filtered guest's chains by name, each rendered once per load."""
    chains = {}
    for guest in ruleset.guests:
        if guest.enabled:
            for way in (Way.IN, Way.OUT):
                rules = guest_chain_rules(guest, way)
                chains[chain_name(guest.name, way)] = _Chain(guest, way, rules, _digest(rules))
    return chains


def _dispatch_element(guest: GuestFirewall, way: Way, digest: str | None = None) -> str:
    """The guest's element in ``fw_in``/``fw_out``, with its chain's digest as comment."""
    digest = digest or chain_digest(guest, way)
    return f'{guest.ip} comment "{DIGEST_PREFIX}{digest}" : jump {chain_name(guest.name, way)}'


def _elements(items: Iterable[str]) -> str:
    listed = list(items)
    return f" elements = {{ {', '.join(listed)} }};" if listed else ""


def _src_key(guest: GuestFirewall) -> str:
    return f'"{guest.ifname}" . {guest.ip}'


def _self_key(guest: GuestFirewall) -> str:
    return f"{guest.ip} . {guest.ip}"


# Sets and maps: (kind, name, type, elements of a ruleset).
def _collections(
    ruleset: Ruleset, chains: dict[str, _Chain]
) -> list[tuple[str, str, str, list[str]]]:
    enabled = [g for g in ruleset.guests if g.enabled]
    return [
        ("set", "guest_ifs", "ifname", [f'"{g.ifname}"' for g in ruleset.guests]),
        ("set", "guest_addrs", "ipv4_addr", [str(g.ip) for g in ruleset.guests]),
        ("set", "guest_src", "ifname . ipv4_addr", [_src_key(g) for g in ruleset.guests]),
        ("set", "guest_self", "ipv4_addr . ipv4_addr", [_self_key(g) for g in ruleset.guests]),
        ("set", PKG_PROXY_SET, PKG_PROXY_TYPE, []),
        ("set", FW_GUESTS, "ipv4_addr", [str(g.ip) for g in enabled]),
        *(
            (
                "map",
                f"fw_{way}",
                "ipv4_addr : verdict",
                [
                    _dispatch_element(g, way, chains[chain_name(g.name, way)].digest)
                    for g in enabled
                ],
            )
            for way in (Way.IN, Way.OUT)
        ),
    ]


# vs-pkg's temporary opening (vstools.pkg.session): never filled by a render.
PKG_PROXY_SET = "pkg_proxy"
PKG_PROXY_TYPE = "ifname . ipv4_addr . ipv4_addr . inet_service; flags timeout"


# The uid vs-pkg's proxy runs as, used by nothing else (Debian reserves 65000-65533): the output
# chain keeps it from opening connections to the host's own addresses (but for DNS) or to link-local
# ones, so a mirror name that resolves, or is re-pointed during a run, to the host cannot lead a
# guest into the host's services through the proxy.
PKG_PROXY_UID = 65533


def pkg_proxy_element(ifname: str, guest_ip: str, proxy_ip: str, port: int) -> str:
    """The key of vs-pkg's element in ``pkg_proxy`` (without its timeout)."""
    return f'"{ifname}" . {guest_ip} . {proxy_ip} . {port}'


# Base chains: (name, hook line, rules). Policy accept: the rest of the host's traffic is not
# the toolkit's business.
BASE_CHAINS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "forward",
        "type filter hook forward priority filter; policy accept;",
        (
            "iifname @guest_ifs meta nfproto ipv6 drop",
            "oifname @guest_ifs meta nfproto ipv6 drop",
            "iifname @guest_ifs iifname . ip saddr != @guest_src drop",
            "ip saddr @guest_addrs iifname . ip saddr != @guest_src drop",
            *DISPATCH_CHECKS,
            "ip saddr vmap @fw_out",
            "ip daddr vmap @fw_in",
        ),
    ),
    (
        "input",
        "type filter hook input priority filter; policy accept;",
        (
            # vs-pkg's proxy, for the guest and run that hold an element, nothing else.
            "iifname . ip saddr . ip daddr . tcp dport @pkg_proxy accept",
            "iifname @guest_ifs drop",
        ),
    ),
    (
        "output",
        "type filter hook output priority filter; policy accept;",
        (
            f"meta skuid {PKG_PROXY_UID} fib daddr type local meta l4proto {{ tcp, udp }}"
            " th dport 53 accept",
            f"meta skuid {PKG_PROXY_UID} ct state new fib daddr type local reject",
            f"meta skuid {PKG_PROXY_UID} ct state new ip daddr 169.254.0.0/16 reject",
            "oifname @guest_ifs ct state related accept",  # the host's rejects of guest traffic
            "oifname . ip daddr . ip saddr . tcp sport @pkg_proxy ct state established accept",
            "oifname @guest_ifs drop",
        ),
    ),
)


def _header(ruleset: Ruleset) -> str:
    enabled = sum(1 for g in ruleset.guests if g.enabled)
    return f"# vs-tools firewall: {len(ruleset.guests)} running guests, {enabled} filtered"


def render_nft(ruleset: Ruleset) -> str:
    """The whole table from nothing, in one transaction (``add table`` makes the ``delete``
    valid when nothing is loaded). Used when no table is loaded, and to show how the kernel
    lists a plan; a loaded table is refreshed in place instead (``render_nft_refresh``):
    deleting base chains that are hooked lets packets through while the hooks change."""
    lines = [_header(ruleset), f"add table {TABLE}", f"delete table {TABLE}", f"table {TABLE} {{"]
    chains = _guest_chains(ruleset)
    for kind, name, type_, elements in _collections(ruleset, chains):
        lines.append(f"\t{kind} {name} {{ type {type_};{_elements(elements)} }}")
    for name, hook, rules in BASE_CHAINS:
        lines += [f"\tchain {name} {{", f"\t\t{hook}", *(f"\t\t{r}" for r in rules), "\t}"]
    lines += [f"\tchain {REJECT_REST} {{", *(f"\t\t{r}" for r in REJECT_REST_RULES), "\t}"]
    for name, chain in chains.items():
        lines += [f"\tchain {name} {{", *(f"\t\t{rule}" for rule in chain.rules), "\t}"]
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_nft_refresh(state: NftState, ruleset: Ruleset) -> str:
    """The whole loaded table brought to ``ruleset`` in one transaction without ever removing
    a hooked base chain or a chain that stays wanted: sets, maps and base chains are flushed and
    refilled; a guest chain whose digest (``state.digests``, read from the verdict maps) matches
    its rules is left as it is, any other wanted one is flushed and refilled, and the chains of
    guests no longer filtered are deleted. So a refresh of an unchanged table writes no guest
    rule, and reading what is loaded never lists a rule."""
    lines = [_header(ruleset) + " (refresh in place)", f"add table {TABLE}"]
    wanted = _guest_chains(ruleset)
    collections = _collections(ruleset, wanted)
    # Flushing the maps first drops their jumps, so chains no longer wanted may be deleted.
    for kind, name, type_, _ in collections:
        lines += [f"add {kind} {TABLE} {name} {{ type {type_}; }}", f"flush {kind} {TABLE} {name}"]
    for name, hook, _ in BASE_CHAINS:
        lines += [f"add chain {TABLE} {name} {{ {hook} }}", f"flush chain {TABLE} {name}"]
    lines += [f"add chain {TABLE} {REJECT_REST}", f"flush chain {TABLE} {REJECT_REST}"]
    lines += [f"add rule {TABLE} {REJECT_REST} {rule}" for rule in REJECT_REST_RULES]
    for name in sorted(state.chains - set(wanted) - NftState.BASE - {REJECT_REST}):
        lines += [f"flush chain {TABLE} {name}", f"delete chain {TABLE} {name}"]
    for name, chain in wanted.items():
        if name in state.chains and state.digests.get(name) == chain.digest:
            continue  # loaded with exactly these rules
        lines += [f"add chain {TABLE} {name}", f"flush chain {TABLE} {name}"]
        lines += [f"add rule {TABLE} {name} {rule}" for rule in chain.rules]
    for _kind, name, _, elements in collections:
        if elements:
            lines.append(f"add element {TABLE} {name} {{ {', '.join(elements)} }}")
    for name, _, rules in BASE_CHAINS:
        lines += [f"add rule {TABLE} {name} {rule}" for rule in rules]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class NftState:
    """What is loaded in ``inet vstools``, read from ``nft -j list table``."""

    chains: frozenset[str] = frozenset()
    ifs: frozenset[str] = frozenset()
    addrs: frozenset[str] = frozenset()
    src: frozenset[tuple[str, str]] = frozenset()
    fw_in: dict[str, str] = field(default_factory=dict)
    fw_out: dict[str, str] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)  # guest chain -> digest of its rules
    # The forward chain makes the checks common to every guest (DISPATCH_CHECKS, the invalid
    # drop through ``fw_guests``): a table loaded by an earlier version has some of them in each
    # guest chain instead, and no ``fw_guests``, and needs a refresh.
    dispatch_checks: bool = False

    BASE: ClassVar[frozenset[str]] = frozenset({"forward", "input", "output"})

    @property
    def complete(self) -> bool:
        """The base chains are there (a table someone half-deleted gets a full load)."""
        return self.chains >= self.BASE


def _element_value(item: object) -> object:
    if isinstance(item, dict) and "elem" in item:
        return item["elem"]["val"]
    return item


def parse_nft_state(text: str) -> NftState:
    """Parse ``nft -j`` listings of our table (the whole table, or some of its maps and chains;
    objects of other tables, as ``list chains inet`` shows them, are left out)."""
    chains: set[str] = set()
    sets: dict[str, list[object]] = {}
    family, table = TABLE.split()
    dispatch_checks = False
    for entry in json.loads(text).get("nftables", []):
        body = next(iter(entry.values()), None)
        if not isinstance(body, dict) or (body.get("family"), body.get("table")) != (family, table):
            continue
        if "chain" in entry:
            chains.add(entry["chain"]["name"])
        if "rule" in entry and body.get("chain") == "forward":
            dispatch_checks |= f'"@{FW_GUESTS}"' in json.dumps(body.get("expr", []))
        for kind in ("set", "map"):
            if kind in entry:
                sets[entry[kind]["name"]] = [_element_value(e) for e in entry[kind].get("elem", [])]
    src = set()
    for item in sets.get("guest_src", []):
        if isinstance(item, dict) and "concat" in item:
            ifname, ip = item["concat"]
            src.add((str(ifname), str(ip)))
    maps: dict[str, dict[str, str]] = {"fw_in": {}, "fw_out": {}}
    digests: dict[str, str] = {}
    for key, found in maps.items():
        for pair in sets.get(key, []):
            if isinstance(pair, list) and len(pair) == 2 and isinstance(pair[1], dict):
                address, comment = pair[0], ""
                if isinstance(address, dict) and "elem" in address:  # an element with a comment
                    address, comment = address["elem"]["val"], address["elem"].get("comment", "")
                target = str(pair[1].get("jump", {}).get("target", ""))
                found[str(address)] = target
                if comment.startswith(DIGEST_PREFIX):
                    digests[target] = comment.removeprefix(DIGEST_PREFIX)
    return NftState(
        frozenset(chains),
        frozenset(str(i) for i in sets.get("guest_ifs", [])),
        frozenset(str(i) for i in sets.get("guest_addrs", [])),
        frozenset(src),
        maps["fw_in"],
        maps["fw_out"],
        digests,
        dispatch_checks,
    )


def render_nft_update(
    state: NftState | None, put: Iterable[GuestFirewall], remove: Iterable[GuestFirewall] = ()
) -> str:
    """One transaction that brings the named guests to their model (``put``) or takes them
    out (``remove``), leaving every other guest's rules untouched.

    With ``state`` None (nothing read: the fast path) the text is valid only on a table of
    this layout where each changed address is the changed guest's own or nobody's, and fails
    as a whole otherwise: the forward chain is flushed and refilled (it fails when the chain is
    gone), a map element is first added as the guest's own (it fails when another guest's
    element holds the address, catalogue A6; a differing comment is not a difference to the
    kernel), then deleted and added with its digest. The caller then reads ``state`` and
    renders the exact transaction."""
    lines = ["# vs-tools firewall: update of " + ", ".join(sorted(g.name for g in put))]
    if state is None:
        forward = next(rules for name, _, rules in BASE_CHAINS if name == "forward")
        lines.append(f"flush chain {TABLE} forward")
        lines += [f"add rule {TABLE} forward {rule}" for rule in forward]
    for guest in remove:
        lines += _nft_remove(state, guest, keep_membership=False)
    for guest in put:
        lines += [
            f'add element {TABLE} guest_ifs {{ "{guest.ifname}" }}',
            f"add element {TABLE} guest_addrs {{ {guest.ip} }}",
            f"add element {TABLE} guest_src {{ {_src_key(guest)} }}",
            f"add element {TABLE} guest_self {{ {_self_key(guest)} }}",
        ]
        if not guest.enabled:
            lines += _nft_remove(state, guest, keep_membership=True)
            continue
        for way in (Way.IN, Way.OUT):
            chain = chain_name(guest.name, way)
            lines += [f"add chain {TABLE} {chain}", f"flush chain {TABLE} {chain}"]
            lines += [f"add rule {TABLE} {chain} {rule}" for rule in guest_chain_rules(guest, way)]
            # The element is replaced, not only added: its comment carries the chain's digest.
            key = f"fw_{way}"
            if state is None:
                lines.append(f"add element {TABLE} {key} {{ {guest.ip} : jump {chain} }}")
            if state is None or str(guest.ip) in (state.fw_in if way is Way.IN else state.fw_out):
                lines.append(f"delete element {TABLE} {key} {{ {guest.ip} }}")
            lines.append(f"add element {TABLE} {key} {{ {_dispatch_element(guest, way)} }}")
        lines.append(f"add element {TABLE} {FW_GUESTS} {{ {guest.ip} }}")
    return "\n".join(lines) + "\n"


def _nft_remove(
    state: NftState | None, guest: GuestFirewall, *, keep_membership: bool
) -> list[str]:
    """Take a guest's chains (and membership) out. Only the maps need ``state``: a chain or a
    set element is first added then deleted, which is valid whether it was there or not, so
    an update never needs to list the whole table (that costs 0.4 s with 1000 guests)."""
    lines: list[str] = []
    ip = str(guest.ip)
    # A verdict-map element is removed only if it leads to this guest's own chain: another
    # guest's entry for the same address is never taken away (catalogue A6). Without
    # ``state`` the element is added as the guest's own first, which fails when it is not.
    others = False
    for way in (Way.IN, Way.OUT):
        chain = chain_name(guest.name, way)
        if state is None:
            lines += [
                f"add chain {TABLE} {chain}",
                f"add element {TABLE} fw_{way} {{ {guest.ip} : jump {chain} }}",
                f"delete element {TABLE} fw_{way} {{ {guest.ip} }}",
            ]
            continue
        current = state.fw_in if way is Way.IN else state.fw_out
        if current.get(ip) == chain:
            lines.append(f"delete element {TABLE} fw_{way} {{ {guest.ip} }}")
        elif ip in current:
            others = True
    if not others:  # the address leaves the maps (or was not in them): it leaves fw_guests
        lines += [
            f"add element {TABLE} {FW_GUESTS} {{ {ip} }}",
            f"delete element {TABLE} {FW_GUESTS} {{ {ip} }}",
        ]
    for way in (Way.IN, Way.OUT):
        chain = chain_name(guest.name, way)
        lines += [
            f"add chain {TABLE} {chain}",
            f"flush chain {TABLE} {chain}",
            f"delete chain {TABLE} {chain}",
        ]
    if not keep_membership:
        members = (
            []
            if others
            else [
                ("guest_src", _src_key(guest)),
                ("guest_self", _self_key(guest)),
                ("guest_addrs", ip),
            ]
        )
        members.append(("guest_ifs", f'"{guest.ifname}"'))
        for name, key in members:
            lines += [
                f"add element {TABLE} {name} {{ {key} }}",
                f"delete element {TABLE} {name} {{ {key} }}",
            ]
    return lines
