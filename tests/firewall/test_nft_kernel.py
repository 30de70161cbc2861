"""The nftables backend against the kernel, in a network namespace made for the test: the set
``fw_guests`` holds exactly the keys of the verdict maps after every kind of load (a first load,
updates with and without reading, a guest disabled, removed, an address held by another guest,
a refresh), and a table loaded by the previous layout is brought up to date by an update."""

from __future__ import annotations

import json
from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest

from tests.guests import in_netns, named_netns
from vstools.firewall.backends import Nftables
from vstools.firewall.model import GuestFirewall, Ruleset
from vstools.firewall.render import FW_GUESTS, TABLE, parse_nft_state, render_nft
from vstools.host.nftlib import NftContext

pytestmark = pytest.mark.privileged


def guest(name: str, last: int, *, enabled: bool = True) -> GuestFirewall:
    return GuestFirewall(name, IPv4Address(f"198.51.100.{last}"), f"vs10{last}", enabled=enabled)


@pytest.fixture
def netns(run_prefix: str) -> Iterator[str]:
    with named_netns(f"{run_prefix}-fwk") as name, in_netns(name):
        yield name


def _keys(kind: str, name: str) -> set[str]:
    ok, output, _ = NftContext(json=True).run(f"list {kind} {TABLE} {name}", check=False)
    assert ok, name
    keys = set()
    for entry in json.loads(output)["nftables"]:
        for item in next(iter(entry.values())).get("elem", []):
            key = item[0] if isinstance(item, list) else item
            keys.add(str(key["elem"]["val"] if isinstance(key, dict) else key))
    return keys


def loaded() -> tuple[set[str], set[str], set[str]]:
    """The keys of fw_in and fw_out, and the elements of fw_guests, as loaded."""
    return _keys("map", "fw_in"), _keys("map", "fw_out"), _keys("set", FW_GUESTS)


def test_fw_guests_follows_the_verdict_maps(netns: str) -> None:
    a, b, c = guest("a", 21), guest("b", 22), guest("c", 23, enabled=False)
    backend = Nftables()
    everyone = Ruleset((a, b, c))
    backend.apply(lambda: everyone, [a, b, c], [])  # nothing loaded: the whole table
    assert loaded() == ({"198.51.100.21", "198.51.100.22"},) * 3
    c_on = guest("c", 23)
    backend.apply(lambda: Ruleset((a, b, c_on)), [c_on], [])  # the update that reads nothing
    assert loaded() == ({"198.51.100.21", "198.51.100.22", "198.51.100.23"},) * 3
    a_off = guest("a", 21, enabled=False)
    backend.apply(lambda: Ruleset((a_off, b, c_on)), [a_off], [])
    assert loaded() == ({"198.51.100.22", "198.51.100.23"},) * 3
    backend.apply(lambda: Ruleset((a_off, c_on)), [], [b])
    assert loaded() == ({"198.51.100.23"},) * 3
    # A6: a guest taken out with an address another guest's chains hold leaves it there (the
    # update that reads nothing is refused, the one read from the maps applies).
    impostor = guest("d", 23)
    backend.apply(lambda: Ruleset((a_off, c_on)), [], [impostor])
    assert loaded() == ({"198.51.100.23"},) * 3
    backend.apply(lambda: Ruleset((a, b)), [], [], refresh=True)
    assert loaded() == ({"198.51.100.21", "198.51.100.22"},) * 3


def _forward_is_current() -> bool:
    """Whether the loaded forward chain is this layout's, as an update reads it."""
    ok, listing, _ = NftContext(json=True).run(f"list chain {TABLE} forward", check=False)
    return ok and parse_nft_state(listing).dispatch_checks


def test_an_update_brings_the_previous_layout_up_to_date(netns: str) -> None:
    """A table loaded before fw_guests (each guest chain dropped invalid packets itself) has
    no such set: the update that reads nothing fails whole, and the table is refreshed."""
    a, b = guest("a", 21), guest("b", 22)
    text = render_nft(Ruleset((a,)))
    previous = [
        line
        for line in text.splitlines()
        if FW_GUESTS not in line  # the set and the forward chain's two drops
    ]
    NftContext().run("\n".join(previous) + "\n")
    with pytest.raises(AssertionError):
        loaded()
    assert not _forward_is_current()
    Nftables().apply(lambda: Ruleset((a, b)), [b], [])
    assert loaded() == ({"198.51.100.21", "198.51.100.22"},) * 3
    assert _forward_is_current()
