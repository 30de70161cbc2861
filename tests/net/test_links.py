"""The netlink door's lookups: pyroute2 loaded without the parts of it the toolkit does not use,
and the interface indices an attach remembers (``Netns(remember_links=True)``), forgotten when
it deletes the interface."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.guests import named_netns

pytestmark = [pytest.mark.privileged]

# Run in a namespace of its own: counts the netlink lookups each Netns makes.
SCRIPT = """
import json, subprocess, sys
from vstools.host.netlink import Netns

def ip(*argv):
    subprocess.run(["ip", *argv], check=True)

def veth():
    ip("link", "add", "vstd0", "type", "veth", "peer", "name", "vstd0p")

def counting(netns):
    calls = []
    lookup = netns.ipr.link_lookup
    netns.ipr.link_lookup = lambda **kw: calls.append(kw) or lookup(**kw)
    return calls

report = {}
veth()
with Netns(remember_links=True) as kept:
    calls = counting(kept)
    first = kept.index("vstd0")
    kept.set_up("vstd0")
    report["kept"] = [kept.index("vstd0") == first, len(calls)]
    kept.delete_link("vstd0")
    veth()  # the same name, a new interface
    again = kept.index("vstd0")
    report["after_delete"] = [again is not None and again != first, len(calls)]
    report["missing"] = [kept.index("vstd1"), kept.index("vstd1"), len(calls)]
with Netns() as plain:
    calls = counting(plain)
    plain.index("vstd0"); plain.index("vstd0")
    report["plain"] = len(calls)
report["whole_pyroute2"] = "pyroute2.ndb.main" in sys.modules or "pyroute2.ipdb" in sys.modules
print(json.dumps(report))
"""


def test_an_attach_looks_each_interface_up_once_and_forgets_what_it_deletes(
    run_prefix: str,
) -> None:
    with named_netns(f"{run_prefix}-lnk") as netns:
        done = subprocess.run(
            ["ip", "netns", "exec", netns, sys.executable, "-c", SCRIPT],
            check=False,
            capture_output=True,
            text=True,
        )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["kept"] == [True, 1]  # three uses, one lookup
    assert report["after_delete"] == [True, 2]  # looked up again: the new interface
    assert report["missing"] == [None, None, 4]  # an absent one is never remembered
    assert report["plain"] == 2  # without remember_links, every use looks up
    assert report["whole_pyroute2"] is False  # only IPRoute's part of pyroute2 was loaded
