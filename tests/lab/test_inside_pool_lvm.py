"""The pool's commands to and from LVM slaves, end to end, inside the lab VM (this machine's
kernel has neither device-mapper nor 802.1Q): tests/lab/test_lab.py boots the VM and runs this
file there (VS_LAB_INSIDE=1); on the host the module is skipped, as its outer test covers it.

The pool's real test hosts (tests/poolhosts.py: a master and three slaves, each with its sshd
in network and mount namespaces of its own, on a btrfs file system so D1's tree keeps its user
xattrs, which the VM's tmpfs cannot), set up once for the three steps, which follow one guest:
vsh-01 on directories, vsh-02 and vsh-03 on LVM (a volume group each, on a loop device of its
own), both routed to a LAN on VLAN 7. The guest, made on vsh-01 with D1's tree and a server on
tcp/80 behind its firewall, is (1) fetched to the master and put on vsh-02, where it lands as a
logical volume and starts; (2) moved while it runs and serves to vsh-03, the LAN reaching it at
its address before and after; (3) fetched from vsh-03 to the master, read from a snapshot."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness.btrfs import btrfs_loop
from harness.pool import on_lvm, pool_up
from tests.guests import Lan
from tests.pool.test_copy import describe_tree, fidelity_tree
from tests.pool.test_move_net import WEB, _ip, _mac, _open_within
from tests.poolhosts import Pool, PoolHost, pool_lan

if not os.environ.get("VS_LAB_INSIDE"):
    pytest.skip("runs inside the lab VM (tests/lab/test_lab.py boots it)", allow_module_level=True)

pytestmark = [pytest.mark.privileged, pytest.mark.e2e]

LVM_ENV = {"DM_DISABLE_UDEV": "1"}  # the VM has no udev: LVM makes its own device nodes
VLAN = 7
ROOT = "/var/lib/vservers/web"
# A command under TCG: a Python start or an ssh handshake takes seconds there, and far more
# when the machine running qemu is busy (a vs-move makes dozens of both).
TIMEOUT_S = 1200


@dataclass
class LvmPool:
    """The pool, its LAN, each LVM slave's volume group, and the guest's D1 tree as made."""

    pool: Pool
    lan: Lan
    vgs: dict[str, str]
    expected: dict[str, object] = field(default_factory=dict)


@pytest.fixture(scope="module")
def lvm_pool(
    tmp_path_factory: pytest.TempPathFactory, run_prefix: str, net_probe_binary: Path
) -> Iterator[LvmPool]:
    """The master and three slaves, vsh-02 and vsh-03 on LVM and on the VLAN's LAN, for the
    whole module; everything removed when it ends, also on failure."""
    top = tmp_path_factory.mktemp("lvmpool")
    with contextlib.ExitStack() as stack:
        hosts = stack.enter_context(btrfs_loop(top, run_prefix))
        pool = stack.enter_context(pool_up(hosts, run_prefix, setenv=LVM_ENV))
        with open(pool.master.base / "etc" / "vs-tools.conf", "a") as conf:
            # A step here (an lvcreate and mkfs, a Python start) runs under TCG, niced, beside
            # the whole foreground suite: several times slower than a real slave.
            conf.write("SSH_CALL_TIMEOUT=900\n")
        vgs = {}
        for name in ("vsh-02", "vsh-03"):
            vgs[name] = f"{run_prefix}vg{name[-1]}"
            image = top / f"{run_prefix}-{name}.img"
            stack.enter_context(on_lvm(pool.slave(name), image, vgs[name]))
        lan = stack.enter_context(
            pool_lan(pool, net_probe_binary, f"{run_prefix}-plan", dict.fromkeys(vgs), vlan=VLAN)
        )
        yield LvmPool(pool, lan, vgs)


def _lvs(vg: str) -> list[str]:
    out = subprocess.run(["lvs", "--noheadings", "-o", "lv_name", vg], env={**os.environ,
                         **LVM_ENV}, capture_output=True, text=True, check=True).stdout  # fmt: skip
    return sorted(out.split())


def _mounted_from(host: PoolHost, path: str) -> str:
    """The device mounted at ``path`` in the host's mount namespace ("" when none is)."""
    return host.run("findmnt", "-rn", "-o", "SOURCE", path, check=False).stdout.strip()


def _roots(host: PoolHost) -> list[str]:
    return sorted(os.listdir(host.inside("/var/lib/vservers")))


def _running_here(host: PoolHost) -> None:
    if host.state("web") is None:
        pytest.fail(f"web does not run on {host.name}: the step before failed")


def test_put_lands_a_guest_on_an_lvm_slave_as_its_volume(lvm_pool: LvmPool) -> None:
    """vs-put to an LVM slave: received in a volume of the disk limit, renamed to the guest's
    and unmounted at the commit; it starts from it with its files, hard links and owners."""
    pool, lan = lvm_pool.pool, lvm_pool.lan
    one, two, vg = pool.slave("vsh-01"), pool.slave("vsh-02"), lvm_pool.vgs["vsh-02"]
    one.run("vs-create", "--name", "web", "--interface", WEB, "--context", "101", "--disk", "64",
            timeout=TIMEOUT_S)  # fmt: skip
    source = one.base / "roots" / "web"
    fidelity_tree(source)
    lvm_pool.expected = describe_tree(source / "root" / "d1")
    shutil.copy2(lan.probe, source / "bin" / "vstnet")
    with open(source / "etc" / "inittab", "a") as inittab:
        inittab.write("::respawn:/bin/vstnet listen tcp 80\n")
    (one.base / "guests" / "web" / "firewall.conf").write_text("enable\nallow from 0/0 to tcp/80\n")
    got = pool.master.run("vs-get", "--name", "web", timeout=TIMEOUT_S).stdout.split(":")
    assert got[:2] == ["vsh-01", "web"] and got[4] == "stopped", got
    one.run("vs-remove", "--name", "web", "--yes", timeout=TIMEOUT_S)  # the store has a copy
    put = pool.master.run("vs-put", "--name", "web", "--host", "vsh-02", timeout=TIMEOUT_S)
    assert put.stdout.startswith("vsh-02:web:"), put.stdout + put.stderr
    assert _lvs(vg) == ["web"]  # the received volume, renamed: no web.receiving left
    conf = (two.base / "guests" / "web" / "guest.conf").read_text()
    assert "STORAGE=lvm" in conf and f"LVM_VG={vg}" in conf and "DISK_LIMIT=64" in conf
    assert _mounted_from(two, ROOT) == ""  # a stopped lvm guest's volume is not mounted
    assert not any(p.name.startswith(".") for p in (two.base / "roots").iterdir())
    two.run("vs-control", "--name", "web", "--start", timeout=TIMEOUT_S)
    assert _mounted_from(two, ROOT) == f"/dev/mapper/{vg}-web"
    assert describe_tree(two.inside(f"{ROOT}/root/d1")) == lvm_pool.expected
    # As the guest sees them: one inode under two names; the file of uid 1000000 (outside the
    # guest's user namespace map, so it is nobody's there) readable by its root.
    seen = two.run("vs-exec", "-T", "web", "--", "sh", "-c", "stat -c '%i %h' /root/d1/file "
                   "/root/d1/hardlink; cat /root/d1/high", timeout=TIMEOUT_S)  # fmt: skip
    linked, link, high = seen.stdout.splitlines()
    assert linked == link and linked.endswith(" 2") and high == "far"
    # Routed on the VLAN behind its firewall: the LAN reaches tcp/80 only.
    assert "vlan protocol 802.1Q id 7" in _ip(two.netns, "-d", "link", "show", f"up0.{VLAN}")
    assert _open_within(lan, 80, 30)
    assert lan.connect(WEB, 81, ms=1000) != "open"


def test_move_of_a_serving_guest_between_lvm_slaves_on_a_vlan(lvm_pool: LvmPool) -> None:
    """vs-move of the running guest from vsh-02 to vsh-03: passes from a snapshot of its
    volume while it runs, the final one from a snapshot of the stopped volume, straight from
    slave to slave; the printed stop; the LAN reaches it at its address right after, its
    neighbour cache told by the destination; nothing of it left on the source."""
    pool, lan = lvm_pool.pool, lvm_pool.lan
    two, three = pool.slave("vsh-02"), pool.slave("vsh-03")
    _running_here(two)
    assert f"lladdr {_mac(two.netns, 'up0')}" in _ip(lan.netns, "neigh", "show", WEB)
    moved = pool.master.run("vs-move", "--name", "web", "--dst_host", "vsh-03", timeout=TIMEOUT_S)
    source, target, name, seconds, stopped, resumed = moved.stdout.strip().split(":")
    assert (source, target, name, resumed) == ("vsh-02", "vsh-03", "web", ""), moved.stdout
    assert 0 < float(stopped) <= float(seconds), moved.stdout
    assert "passes while it ran" in moved.stderr, moved.stderr
    assert "straight from vsh-02 to vsh-03" in moved.stderr, moved.stderr
    # The destination announced it on its VLAN: the LAN's cache has its MAC at once.
    assert f"lladdr {_mac(three.netns, 'up0')}" in _ip(lan.netns, "neigh", "show", WEB)
    assert _open_within(lan, 80, 30)
    assert lan.connect(WEB, 81, ms=1000) != "open"  # the firewall moved with it
    # The source: no volume, no snapshot, no web.moved; its VLAN uplink went with its guest.
    assert _lvs(lvm_pool.vgs["vsh-02"]) == []
    assert two.guests() == [] and [n for n in _roots(two) if n != ".snapshots"] == []
    snapshots = two.inside("/var/lib/vservers/.snapshots")
    assert not snapshots.exists() or os.listdir(snapshots) == []
    assert two.state("web") is None
    assert subprocess.run(["ip", "-n", two.netns, "link", "show", f"up0.{VLAN}"],
                          capture_output=True, check=False).returncode != 0  # fmt: skip
    assert WEB not in _ip(two.netns, "neigh", "show", "proxy")
    # The destination: the guest runs from its own volume, with every attribute.
    vg = lvm_pool.vgs["vsh-03"]
    assert _lvs(vg) == ["web"] and _mounted_from(three, ROOT) == f"/dev/mapper/{vg}-web"
    assert f"LVM_VG={vg}" in (three.base / "guests" / "web" / "guest.conf").read_text()
    assert three.state("web") is not None
    assert describe_tree(three.inside(f"{ROOT}/root/d1")) == lvm_pool.expected


def test_get_reads_an_lvm_guest_from_a_snapshot(lvm_pool: LvmPool) -> None:
    """vs-get from an LVM slave, the guest running, then stopped: read each time from a
    read-only snapshot of its volume, removed afterwards; the store holds what it held."""
    pool = lvm_pool.pool
    three, vg = pool.slave("vsh-03"), lvm_pool.vgs["vsh-03"]
    _running_here(three)
    (three.inside(ROOT) / "root" / "note").write_text("moved\n")  # its volume, mounted
    store = pool.master.base / "state" / "pool" / "store" / "web" / "root" / "root"
    for state in ("running", "stopped"):
        got = pool.master.run("vs-get", "--name", "web", timeout=TIMEOUT_S).stdout.split(":")
        assert got[:2] == ["vsh-03", "web"] and got[4] == "from a snapshot", (state, got)
        assert (store / "note").read_text() == "moved\n", state
        assert describe_tree(store / "d1") == lvm_pool.expected, state
        assert _lvs(vg) == ["web"], state  # its snapshot removed
        mounts = three.run("findmnt", "-rn", "-o", "TARGET").stdout.split()
        assert [m for m in mounts if m.startswith("/var/lib/vservers/")] == (
            [ROOT] if state == "running" else []
        ), state
        if state == "running":
            assert three.state("web") is not None and _open_within(lvm_pool.lan, 80, 30)
            three.run("vs-control", "--name", "web", "--stop", timeout=TIMEOUT_S)
    assert three.state("web") is None and _lvs(vg) == ["web"]
