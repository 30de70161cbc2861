"""Benchmark (issue 3): how long `vs-control --name N --start` takes for a busybox guest, beside
systemd-nspawn, lxc-execute and unshare+chroot on the same rootfs, measured alternately in one
run; and the wall time of `vs-control --all` (status only) with 100 defined guests.

Issue 17 adds a row for a guest with its network and a 6-rule firewall (veth, routes, proxy
ARP, nftables), started through nsenter in a network namespace made for the run (vstbench*,
with an uplink to a second one standing for the LAN), against the same peers without network.

What is compared: vs-control returns once the guest's init runs (detached supervisor, cgroup
with limits, five namespaces, masked /proc, private /dev, seccomp, capabilities). The peers run
/bin/true in their own isolation and return when it has exited. Run as root:
    .venv/bin/python -m bench.bench_start [--rounds 15]
Prints figures and ratios; asserts nothing about time."""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import GUEST, SIX_RULES, remove_cgroups, timed
from harness.scratch import make_scratch_host, scratch_env
from vstools.guest.templates import build_busybox_rootfs

BIN = Path(sys.executable).parent


def wire(work: Path, parent: str) -> list[str]:
    """A host namespace with an uplink (up0) to a LAN namespace, networks.conf and create.conf
    for it, and the guest "n" in it with six firewall rules; the nsenter prefix into it."""
    host, lan = f"{parent}-host", f"{parent}-lan"
    for ns in (host, lan):
        subprocess.run(["ip", "netns", "add", ns], check=True)
    for argv in (
        ["ip", "-n", host, "link", "add", "up0", "type", "veth", "peer", "name", "lan0"],
        ["ip", "-n", host, "link", "set", "lan0", "netns", lan],
        ["ip", "-n", host, "addr", "add", "198.18.0.2/16", "dev", "up0"],
        ["ip", "-n", host, "link", "set", "up0", "up"],
        ["ip", "-n", lan, "addr", "add", "198.18.0.1/16", "dev", "lan0"],
        ["ip", "-n", lan, "link", "set", "lan0", "up"],
    ):
        subprocess.run(argv, check=True)
    (work / "etc" / "networks.conf").write_text("0,198.18.0.0/16,198.18.0.1\n")
    (work / "etc" / "create.conf").write_text("DEFAULT_DEVICE=up0\n")
    build_busybox_rootfs(work / "root" / "n")
    (work / "guests" / "n").mkdir()
    (work / "guests" / "n" / "guest.conf").write_text(
        GUEST.format(name="n", context=3, ip="198.18.0.10")
    )
    (work / "guests" / "n" / "firewall.conf").write_text(SIX_RULES)
    return ["nsenter", f"--net=/run/netns/{host}", "--"]


def unwire(parent: str) -> None:
    for ns in (f"{parent}-host", f"{parent}-lan"):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vstbench-"))
    parent = f"vstbench{os.getpid()}"
    try:
        return run(work, parent, args.rounds)
    finally:
        for inside in ([], ["nsenter", f"--net=/run/netns/{parent}-host", "--"]):
            if inside and not Path(f"/run/netns/{parent}-host").exists():
                continue
            subprocess.run(
                [*inside, str(BIN / "vs-control"), "--all", "--stop", "--yes"],
                env=scratch_env(work),
                capture_output=True,
                check=False,
            )
        unwire(parent)
        remove_cgroups(parent)
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, parent: str, rounds: int) -> int:
    env = make_scratch_host(work, f"CGROUP_PARENT={parent}\nSTOP_TIMEOUT=5\n")
    rootfs = build_busybox_rootfs(work / "root" / "b")
    (work / "guests" / "b").mkdir()
    (work / "guests" / "b" / "guest.conf").write_text(
        GUEST.format(name="b", context=1, ip="198.51.100.1")
    )
    build_busybox_rootfs(work / "root" / "u")
    (work / "guests" / "u").mkdir()
    (work / "guests" / "u" / "guest.conf").write_text(
        GUEST.format(name="u", context=2, ip="198.51.100.2") + "USERNS=yes\n"
    )
    lxc_conf = work / "lxc.conf"
    lxc_conf.write_text(
        f"lxc.rootfs.path = dir:{rootfs}\nlxc.uts.name = bench\nlxc.net.0.type = empty\n"
    )
    nspawn = ["systemd-nspawn", "-q", "-D", str(rootfs), "--register=no", "--keep-unit"]
    inside = wire(work, parent)
    peers: dict[str, list[str] | None] = {
        "vs-control --start": None,
        "vs-control, USERNS=yes": None,
        "vs-control, net+6 rules": None,
        "systemd-nspawn": [*nspawn, "/bin/true"],
        # its user namespace, with the rootfs idmapped as ours is
        "systemd-nspawn -U": [
            *nspawn,
            "--private-users=pick",
            "--private-users-ownership=map",
            "/bin/true",
        ],
        "lxc-execute": [
            "lxc-execute",
            "-n",
            f"vstbench{os.getpid()}",
            "-f",
            str(lxc_conf),
            "--",
            "/bin/true",
        ],
        "unshare+chroot": [
            "unshare",
            "--mount",
            "--pid",
            "--uts",
            "--ipc",
            "--net",
            "--fork",
            "chroot",
            str(rootfs),
            "/bin/true",
        ],
    }
    available = {k: v for k, v in peers.items() if v is None or shutil.which(v[0])}
    for label, argv in list(available.items()):
        tried = argv and subprocess.run(argv, capture_output=True, check=False)
        if argv is not None and tried and tried.returncode != 0:
            print(f"{label}: fails here, not measured: {' '.join(argv)}")
            del available[label]
    times: dict[str, list[float]] = {k: [] for k in available}
    for round_index in range(rounds):
        order = list(available)
        if round_index % 2:
            order.reverse()  # alternate, so drift and caches hit every tool alike
        for label in order:
            argv = available[label]
            if argv is None:
                guest = "u" if "USERNS" in label else "n" if "net" in label else "b"
                control = [str(BIN / "vs-control"), "--name", guest]
                if guest == "n":
                    control = [*inside, *control]
                times[label].append(timed([*control, "--start"], env))
                subprocess.run([*control, "--stop"], env=env, check=True, capture_output=True)
            else:
                times[label].append(timed(argv))
    base = statistics.median(times["vs-control --start"])
    print(
        f"start of a busybox guest, median of {rounds} alternating rounds "
        f"(kernel {os.uname().release}, {len(os.sched_getaffinity(0))} CPUs)"
    )
    print(f"{'tool':<22}{'median ms':>10}{'min ms':>9}{'max ms':>9}{'ratio':>8}")
    for label, values in times.items():
        median = statistics.median(values)
        print(
            f"{label:<22}{median * 1e3:>10.1f}{min(values) * 1e3:>9.1f}"
            f"{max(values) * 1e3:>9.1f}{median / base:>8.2f}"
        )
    missing = sorted(set(peers) - set(available))
    if missing:
        print(f"not installed, not measured: {', '.join(missing)}")

    for index in range(100):
        name = f"s{index:03d}"
        (work / "guests" / name).mkdir()
        (work / "guests" / name / "guest.conf").write_text(
            GUEST.format(name=name, context=100 + index, ip=f"198.51.100.{10 + index}")
        )
    status = [timed([str(BIN / "vs-control"), "--all"], env) for _ in range(rounds)]
    print(
        f"\nvs-control --all (status only), 103 defined guests: median "
        f"{statistics.median(status) * 1e3:.1f} ms over {rounds} runs "
        f"(min {min(status) * 1e3:.1f}, max {max(status) * 1e3:.1f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
