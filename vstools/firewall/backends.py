"""The firewall backends: ``Nftables`` (table ``inet vstools``, one guest changed with one
small transaction) and ``IptablesRestore`` (our chains replaced in one commit). A failed load
leaves the previous rules in force: the kernel applies each whole or not at all."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from typing import Protocol

from vstools.firewall.model import GuestFirewall, Ruleset, Way
from vstools.firewall.render import (
    TABLE,
    _element_value,
    chain_name,
    parse_nft_state,
    render_nft,
    render_nft_refresh,
    render_nft_update,
)
from vstools.firewall.render_ipt import IPT_FORWARD, IPT_HOOKS, ipt_chain, render_iptables
from vstools.host.nftlib import NftContext
from vstools.host.run import run

log = logging.getLogger("vstools.firewall")
# Up to this many guests changed, an update first tries the transaction that reads nothing:
# its text grows with the guests it names, and nft parses all of it before it can fail.
UNREAD_UPDATE_MAX = 8


class Backend(Protocol):
    """What the host's firewall needs of a backend: load, render and list the rules, and tell
    whether a guest's chains are in force."""

    name: str

    def apply(
        self,
        full: Callable[[], Ruleset],
        put: Sequence[GuestFirewall],
        remove: Sequence[GuestFirewall],
        *,
        refresh: bool = False,
    ) -> str:
        """Load: ``put`` and ``remove`` name the guests that change; ``refresh`` brings every
        guest to ``full()``."""
        ...

    def render(self, full: Ruleset) -> str:
        """The whole ruleset ``full`` as this backend's load text."""
        ...

    def listing(self) -> str:
        """Our rules as the kernel lists them now; "" when none are loaded."""
        ...

    def listing_of(self, full: Ruleset) -> str:
        """How the kernel would list ``full`` once loaded (HostError when it does not load)."""
        ...

    def status(self, guest: GuestFirewall) -> tuple[bool, bool]:
        """``(inbound, outbound)``: whether each of the guest's chains is loaded and jumped to."""
        ...


class Nftables:
    """Table ``inet vstools``: one guest changed with one small transaction, the whole table
    replaced at once when it is missing or incomplete, refreshed in place (unchanged guest
    chains kept, by their digest) when it is loaded.

    Everything goes through libnftables in this process (vstools.host.nftlib). A context is
    made per operation, in the calling thread's network namespace, and shared by the reads
    and the load of that operation (one cache)."""

    name = "nftables"
    _seen: str | None = None  # what status() read; a load forgets it

    def _listed(self, nft: NftContext, *objects: str) -> str | None:
        """The ``nft -j`` listings of ``objects`` as one document; None when one is missing
        (no table, or not ours as it should be)."""
        entries: list[object] = []
        for what in objects:
            ok, output, _ = nft.run(f"list {what}", check=False)
            if not ok:
                return None
            entries += json.loads(output).get("nftables", [])
        return json.dumps({"nftables": entries})

    def _dispatch_text(self, nft: NftContext) -> str | None:
        """Only what a one-guest update needs: the two verdict maps, and whether the forward
        chain is there (a few ms with 1000 guests, where the whole table takes 0.5 s)."""
        return self._listed(
            nft, f"map {TABLE} fw_in", f"map {TABLE} fw_out", f"chain {TABLE} forward"
        )

    def _refresh_text(self, nft: NftContext) -> str | None:
        """What a refresh needs: every chain's name (not its rules) and the two verdict maps,
        whose element comments carry the digests of the loaded guest chains."""
        return self._listed(nft, "chains inet", f"map {TABLE} fw_in", f"map {TABLE} fw_out")

    def _transaction(
        self,
        nft: NftContext,
        full: Callable[[], Ruleset],
        put: Sequence[GuestFirewall],
        remove: Sequence[GuestFirewall],
        *,
        refresh: bool,
    ) -> str:
        if refresh:
            text = self._refresh_text(nft)
            state = parse_nft_state(text) if text is not None else None
            if state is None or not state.complete:
                return render_nft(full())  # nothing (usable) loaded: build the table
            return render_nft_refresh(state, full())
        text = self._dispatch_text(nft)
        state = parse_nft_state(text) if text is not None else None
        if state is None or "forward" not in state.chains:
            return render_nft(full())  # nothing (usable) loaded: build the table
        if not state.dispatch_checks:  # loaded by an earlier version: brought up to date whole
            return self._transaction(nft, full, put, remove, refresh=True)
        return render_nft_update(state, put, remove)

    def transaction(
        self,
        full: Callable[[], Ruleset],
        put: Sequence[GuestFirewall],
        remove: Sequence[GuestFirewall],
        *,
        refresh: bool = False,
    ) -> str:
        """The ``nft -f`` text a load would apply: the changed guests, every guest with ``refresh``,
        or the whole table when none (usable) is loaded."""
        return self._transaction(NftContext(json=True), full, put, remove, refresh=refresh)

    def apply(
        self,
        full: Callable[[], Ruleset],
        put: Sequence[GuestFirewall],
        remove: Sequence[GuestFirewall],
        *,
        refresh: bool = False,
    ) -> str:
        """Load the ``transaction`` (one kernel transaction: all or nothing) and forget what
        ``status`` read; returns the text loaded. An update first tries the text that needs no
        reading (``render_nft_update`` without state: the cost of an update is otherwise in the
        listings, which dump every rule or element of the table); when the kernel refuses it,
        nothing of it applied, and the exact transaction is read and loaded instead."""
        nft = NftContext(json=True)
        self._seen = None
        if not refresh and len(put) + len(remove) <= UNREAD_UPDATE_MAX:
            text = render_nft_update(None, put, remove)
            ok, _, errors = nft.run(text, check=False)
            if ok:
                return text
            log.debug("firewall: the update without reading does not apply here (%s)", errors)
        text = self._transaction(nft, full, put, remove, refresh=refresh)
        nft.run(text)
        return text

    def add_element(self, set_name: str, key: str, *, timeout_s: int) -> None:
        """Add one element that the kernel removes by itself after ``timeout_s`` (vs-pkg)."""
        self._seen = None
        NftContext().run(f"add element {TABLE} {set_name} {{ {key} timeout {timeout_s}s }}\n")

    def delete_element(self, set_name: str, key: str) -> None:
        """Remove one element; adding it first makes the deletion valid whether it had
        expired or not, in the same transaction."""
        self._seen = None
        lines = [
            f"add element {TABLE} {set_name} {{ {key} timeout 1s }}",
            f"delete element {TABLE} {set_name} {{ {key} }}",
        ]
        NftContext().run("\n".join(lines) + "\n")

    def elements(self, set_name: str) -> list[str]:
        """The elements of one of our sets as ``nft`` lists them (without timeouts)."""
        ok, output, _ = NftContext(json=True).run(f"list set {TABLE} {set_name}", check=False)
        if not ok:
            return []
        found = []
        for entry in json.loads(output).get("nftables", []):
            for item in entry.get("set", {}).get("elem", []):
                value = _element_value(item)
                if isinstance(value, dict) and "concat" in value:
                    parts = [f'"{p}"' if i == 0 else str(p) for i, p in enumerate(value["concat"])]
                    found.append(" . ".join(parts))
        return found

    def render(self, full: Ruleset) -> str:
        """The whole table as one ``nft -f`` transaction."""
        return render_nft(full)

    def listing(self) -> str:
        """``nft list table inet vstools``, or "" when the table is not loaded."""
        ok, output, _ = NftContext().run(f"list table {TABLE}", check=False)
        return output if ok else ""

    def listing_of(self, full: Ruleset) -> str:
        """How the kernel would list ``full``: loaded into a throwaway network namespace."""
        listing = f"nft -f - && nft list table {TABLE}"
        return run(["unshare", "--net", "--", "sh", "-c", listing], input=render_nft(full)).stdout

    def status(self, guest: GuestFirewall) -> tuple[bool, bool]:
        """Whether the guest's chains are dispatched; the maps are read once per backend
        object (``vs-net --all`` shows every guest from one reading) until the next load."""
        if self._seen is None:
            self._seen = self._dispatch_text(NftContext(json=True)) or ""
        if not self._seen:
            return False, False
        state = parse_nft_state(self._seen)
        ip = str(guest.ip)
        return (
            state.fw_in.get(ip) == chain_name(guest.name, Way.IN),
            state.fw_out.get(ip) == chain_name(guest.name, Way.OUT),
        )


_OUR_IPT_CHAIN = re.compile(r"^:(vs[0-9]+-(?:in|out)|VSTOOLS-(?:FWD|IN|OUT)) ")


class IptablesRestore:
    """Our chains in the filter table, replaced in one ``iptables-restore --noflush`` commit;
    the host's own chains and rules are left alone."""

    name = "iptables-restore"
    save = "iptables-save"
    restore = "iptables-restore"
    _seen: str | None = None  # what status() read; a load forgets it

    def _saved(self) -> str:
        return run([self.save, "-t", "filter"]).stdout

    def render(self, full: Ruleset) -> str:
        """The whole ruleset as an ``iptables-restore --noflush`` file."""
        return render_iptables(full)

    def apply(
        self,
        full: Callable[[], Ruleset],
        put: Sequence[GuestFirewall],
        remove: Sequence[GuestFirewall],
        *,
        refresh: bool = False,
    ) -> str:
        """Replace all our chains with ``full()`` in one commit, stale guest chains deleted and
        missing hooks added; returns the text loaded. Every load is whole: ``put``, ``remove``
        and ``refresh`` are not used."""
        saved = self._saved()
        ours = [m.group(1) for m in map(_OUR_IPT_CHAIN.match, saved.splitlines()) if m]
        stale = [c for c in ours if c.startswith("vs")]
        missing = [b for b, c in IPT_HOOKS if f"-A {b} -j {c}" not in saved]
        text = render_iptables(full(), stale_chains=stale, missing_hooks=missing)
        self._seen = None
        run([self.restore, "--noflush"], input=text)
        return text

    def listing(self) -> str:
        """Our chains and rules as ``iptables-save`` lists them, without the host's own."""
        return _our_iptables_lines(self._saved())

    def listing_of(self, full: Ruleset) -> str:
        """How ``iptables-save`` would list ``full``: loaded into a throwaway network namespace."""
        script = render_iptables(full, missing_hooks=[b for b, _ in IPT_HOOKS])
        saved = run(
            ["unshare", "--net", "--", "sh", "-c", f"{self.restore} && {self.save} -t filter"],
            input=script,
        ).stdout
        return _our_iptables_lines(saved)

    def status(self, guest: GuestFirewall) -> tuple[bool, bool]:
        """Whether the forward chain jumps to the guest's in and out chains; the table is read once
        per backend object until the next load."""
        if self._seen is None:
            self._seen = self._saved()
        saved = self._seen
        return (
            f"-A {IPT_FORWARD} -d {guest.ip}/32 -j {ipt_chain(guest, Way.IN)}" in saved,
            f"-A {IPT_FORWARD} -s {guest.ip}/32 -j {ipt_chain(guest, Way.OUT)}" in saved,
        )


def _our_iptables_lines(saved: str) -> str:
    keep = [
        line
        for line in saved.splitlines()
        if _OUR_IPT_CHAIN.match(line)
        or re.match(r"^-A (vs[0-9]+-(in|out)|VSTOOLS-\w+) ", line)
        or re.match(r"^-A (FORWARD|INPUT|OUTPUT) -j VSTOOLS-", line)
    ]
    return "\n".join(keep) + ("\n" if keep else "")
