"""python-iptables backend (``FIREWALL_BACKEND=iptc``), for hosts that really run *legacy*
iptables. It renders the same rules as the iptables-restore backend (vstools.fwrender.IptRule)
and commits the filter table once (libiptc replaces a table whole, so a load is atomic).

Its rules live in the legacy x_tables: nft and the nft-based ``iptables`` cannot see them, and
on a host whose other tools use nftables the two sets of rules would both apply, unseen by each
other. It says so every time it loads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from vstools.errors import HostError
from vstools.firewall.backends import IptablesRestore
from vstools.firewall.model import GuestFirewall, Ruleset
from vstools.firewall.render_ipt import IPT_HOOKS, IptRule, iptables_rules

log = logging.getLogger("vstools.firewall")

WARNING = "FIREWALL_BACKEND=iptc loads LEGACY iptables: nft and iptables-nft cannot see these rules"


def _iptc() -> Any:
    try:
        import iptc
    except (ImportError, OSError) as exc:
        raise HostError(f"python-iptables is not usable here: {exc}") from None
    return iptc


def _rules_of(rule: IptRule, iptc: Any) -> list[Any]:
    """One IptRule as python-iptables rules (an address list becomes one rule per address)."""
    sources = (rule.src or "").split(",") if rule.src and not rule.src.startswith("!") else [None]
    targets = (rule.dst or "").split(",") if rule.dst else [None]
    built = []
    for src in sources:
        for dst in targets:
            item = iptc.Rule()
            if src is not None:
                item.src = src
            elif rule.src:
                item.src = rule.src  # a negated single address
            if dst is not None:
                item.dst = dst
            if rule.in_if:
                item.in_interface = rule.in_if
            if rule.out_if:
                item.out_interface = rule.out_if
            if rule.proto:
                item.protocol = rule.proto
                match = item.create_match(rule.proto)
                if rule.sport:
                    match.sport = rule.sport
                if rule.dport:
                    match.dport = rule.dport
                if rule.icmp_type:
                    match.icmp_type = rule.icmp_type
            if rule.ctstate:
                item.create_match("conntrack").ctstate = rule.ctstate
            if rule.comment:
                item.create_match("comment").comment = rule.comment
            target = item.create_target(rule.target)
            for option, value in rule.target_args:
                setattr(target, option.lstrip("-").replace("-", "_"), value.strip('"'))
            built.append(item)
    return built


class Iptc(IptablesRestore):
    """The iptables-restore backend's rules loaded through python-iptables, into legacy iptables."""

    name = "iptc"
    save = "iptables-legacy-save"
    restore = "iptables-legacy-restore"

    def apply(
        self,
        full: Callable[[], Ruleset],
        put: Sequence[GuestFirewall],
        remove: Sequence[GuestFirewall],
        *,
        refresh: bool = False,
    ) -> str:
        """Replace all our chains with ``full()`` in one commit of the filter table (HostError when
        refused), warning that the rules are legacy ones; returns them as ``-A`` lines. Every load
        is whole: ``put``, ``remove`` and ``refresh`` are not used."""
        log.warning(WARNING)
        self._seen = None
        iptc = _iptc()
        chains, rules = iptables_rules(full())
        table = iptc.Table(iptc.Table.FILTER)
        table.autocommit = False
        table.refresh()  # python-iptables caches the table: take the kernel's current one
        try:
            existing = {chain.name: chain for chain in table.chains}
            ours = [n for n in existing if n.startswith(("vs", "VSTOOLS-"))]
            for name in ours:  # no jump is left to a chain about to go
                existing[name].flush()
            for name in ours:
                if name not in chains:
                    table.delete_chain(existing[name])
            by_name = {}
            for name in chains:
                by_name[name] = existing.get(name) or table.create_chain(name)
            for rule in rules:
                for item in _rules_of(rule, iptc):
                    by_name[rule.chain].append_rule(item)
            for builtin, entry in IPT_HOOKS:
                chain = iptc.Chain(table, builtin)
                if not any(r.target.name == entry for r in chain.rules):
                    hook = iptc.Rule()
                    hook.create_target(entry)
                    chain.insert_rule(hook)
            table.commit()
        except Exception as exc:
            table.refresh()
            raise HostError(f"python-iptables refused the ruleset: {exc}") from None
        finally:
            table.autocommit = True
        return "\n".join(" ".join(["-A", r.chain, *r.args()]) for r in rules) + "\n"
