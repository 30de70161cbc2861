"""Benchmark (issue 17): a boot storm. `vs-control --all --start` and `--all --stop` of 100
busybox guests, beside the same 100 started as LXC containers on the same root filesystems
(`lxc-start -d` each, one after the other), without network and with it (vs-tools: veth,
route, proxy ARP and a 6-rule firewall each; LXC: a veth in router mode, its route and proxy
ARP), measured alternately in one run. Stops: graceful against graceful (vs-control --stop
against `lxc-stop` of every container at once; one after the other would wait each one's
shutdown in turn) and kill against kill (vs-control --stop --kill against `lxc-stop -k` each).

Everything happens under prefixes starting with vstbench: a network namespace with an uplink
to a second one standing for the LAN (nothing in the machine's own), cgroups, LXC containers in
a private LXC path; all removed after, also on failure. LXC is installed from Debian if
missing. Run as root:
    .venv/bin/python -m bench.bench_storm [--rounds 3] [--guests 100]
Prints figures and ratios; asserts nothing about time."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import GUEST, SIX_RULES, machine_cpu_s
from harness.scratch import make_scratch_host, scratch_env
from vstools.guest.templates import build_busybox_rootfs

BIN = Path(sys.executable).parent
LXC_BASE = """lxc.rootfs.path = dir:{rootfs}
lxc.uts.name = {name}
lxc.signal.halt = SIGUSR2
lxc.cgroup.dir = {cgroup}
lxc.apparmor.profile = unconfined
"""
# LXC's routed veth: the host end gets the container's /32 route and proxy ARP for its gateway.
LXC_NET = """lxc.net.0.type = veth
lxc.net.0.veth.mode = router
lxc.net.0.veth.pair = {pair}
lxc.net.0.name = eth0
lxc.net.0.flags = up
lxc.net.0.ipv4.address = {ip}/32
lxc.net.0.ipv4.gateway = dev
"""


class Storm:
    """The scratch host, its namespaces and the two sets of 100 guests."""

    def __init__(self, work: Path, count: int) -> None:
        self.work = work
        self.count = count
        self.prefix = f"vstbench{os.getpid()}"
        self.hostns = f"{self.prefix}-host"
        self.lanns = f"{self.prefix}-lan"
        self.env = scratch_env(work)
        self.lxcpath = work / "lxc"
        self.names = [f"vstl{index:03d}" for index in range(count)]

    def enter(self) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.hostns}", "--"]

    def ip_of(self, index: int) -> str:
        return f"198.18.{1 + index // 200}.{10 + index % 200}"

    def setup(self) -> None:
        make_scratch_host(self.work, f"CGROUP_PARENT={self.prefix}\nSTOP_TIMEOUT=5\n")
        (self.work / "lxc").mkdir()
        (self.work / "etc" / "networks.conf").write_text("0,198.18.0.0/16,198.18.0.1\n")
        (self.work / "etc" / "create.conf").write_text("DEFAULT_DEVICE=up0\n")
        template = build_busybox_rootfs(self.work / "template")
        for index, name in enumerate(self.names):
            shutil.copytree(template, self.work / "root" / name, symlinks=True)
            (self.work / "guests" / name).mkdir()
            (self.work / "guests" / name / "guest.conf").write_text(
                GUEST.format(name=name, context=1000 + index, ip=self.ip_of(index))
            )
            (self.lxcpath / name).mkdir()
        for ns in (self.hostns, self.lanns):
            subprocess.run(["ip", "netns", "add", ns], check=True)
        ip = ["ip", "-n", self.hostns]
        lan = ["ip", "-n", self.lanns]
        for argv in (
            [*ip, "link", "add", "up0", "type", "veth", "peer", "name", "lan0"],
            [*ip, "link", "set", "lan0", "netns", self.lanns],
            [*ip, "addr", "add", "198.18.0.2/16", "dev", "up0"],
            [*ip, "link", "set", "up0", "up"],
            [*lan, "addr", "add", "198.18.0.1/16", "dev", "lan0"],
            [*lan, "link", "set", "lan0", "up"],
        ):
            subprocess.run(argv, check=True)

    def set_network(self, network: bool) -> None:
        """Give every guest (vs-tools and LXC alike) a network and firewall, or none."""
        for index, name in enumerate(self.names):
            firewall = self.work / "guests" / name / "firewall.conf"
            if network:
                firewall.write_text(SIX_RULES)
            else:
                firewall.unlink(missing_ok=True)
            config = LXC_BASE.format(
                rootfs=self.work / "root" / name, name=name, cgroup=f"{self.prefix}lxc/{name}"
            )
            config += (
                LXC_NET.format(pair=f"vstbl{index:03d}", ip=self.ip_of(index))
                if network
                else "lxc.net.0.type = empty\n"
            )
            (self.lxcpath / name / "config").write_text(config)
        # Without network the guests' addresses are in no network: vs-tools gives them loopback.
        networks = self.work / "etc" / "networks.conf"
        networks.write_text("0,198.18.0.0/16,198.18.0.1\n" if network else "")

    def control(self, *argv: str) -> None:
        subprocess.run(
            [*self.enter(), str(BIN / "vs-control"), *argv],
            env=self.env,
            check=True,
            capture_output=True,
        )

    def lxc(self, tool: str, name: str, *argv: str) -> list[str]:
        return [*self.enter(), tool, "-n", name, "-P", str(self.lxcpath), *argv]

    def lxc_start_each(self) -> None:
        for name in self.names:
            subprocess.run(self.lxc("lxc-start", name, "-d"), check=True, capture_output=True)

    def lxc_stop_each(self, *flags: str) -> None:
        for name in self.names:
            subprocess.run(self.lxc("lxc-stop", name, *flags), check=True, capture_output=True)

    def lxc_stop_all_at_once(self) -> None:
        stops = [
            subprocess.Popen(self.lxc("lxc-stop", name), stdout=subprocess.DEVNULL)
            for name in self.names
        ]
        for stop in stops:
            if stop.wait() != 0:
                raise RuntimeError("lxc-stop failed")

    def cleanup(self) -> None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            self.control("--all", "--stop", "--kill", "--yes")
        for name in self.names:
            if (self.lxcpath / name / "config").exists():
                subprocess.run(self.lxc("lxc-stop", name, "-k"), capture_output=True, check=False)
        for ns in (self.hostns, self.lanns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        for controller in Path("/sys/fs/cgroup").iterdir():
            for parent in (self.prefix, f"{self.prefix}lxc"):
                if not (controller / parent).is_dir():
                    continue
                nested = [p for p in (controller / parent).rglob("*") if p.is_dir()]
                for leftover in sorted(nested, key=lambda p: len(p.parts), reverse=True):
                    with contextlib.suppress(OSError):
                        leftover.rmdir()
                with contextlib.suppress(OSError):
                    (controller / parent).rmdir()


def clock(action: Callable[[], object]) -> tuple[float, float, float]:
    """Wall seconds ``action`` took, and the machine's user and system CPU seconds meanwhile."""
    user, system = machine_cpu_s()
    start = time.perf_counter()
    action()
    wall = time.perf_counter() - start
    user_after, system_after = machine_cpu_s()
    return wall, user_after - user, system_after - system


Times = dict[str, list[tuple[float, float, float]]]


def measure(storm: Storm, rounds: int) -> Times:
    """Per round, alternating which tool goes first: start, graceful stop, start, kill."""
    times: Times = {}

    def note(label: str, action: Callable[[], object]) -> None:
        times.setdefault(label, []).append(clock(action))

    def ours() -> None:
        note("vs-control --all --start", lambda: storm.control("--all", "--start"))
        note("vs-control --all --stop", lambda: storm.control("--all", "--stop", "--yes"))
        storm.control("--all", "--start")
        note(
            "vs-control --all --stop --kill",
            lambda: storm.control("--all", "--stop", "--kill", "--yes"),
        )

    def lxc() -> None:
        note("lxc-start -d each", storm.lxc_start_each)
        note("lxc-stop, all at once", storm.lxc_stop_all_at_once)
        storm.lxc_start_each()
        note("lxc-stop -k each", lambda: storm.lxc_stop_each("-k"))

    for index in range(rounds):
        for run in (ours, lxc) if index % 2 == 0 else (lxc, ours):
            run()
    return times


def report(title: str, times: Times, rounds: int) -> None:
    print(f"\n{title} (median of {rounds} alternating rounds; CPU: the whole machine's, in")
    print("  the meantime, user and system; a stop's network namespaces are freed after it)")
    print(f"  {'':<34}{'median ms':>11}{'min ms':>9}{'max ms':>9}{'CPU-s usr':>11}{'sys':>7}")
    for label, samples in times.items():
        walls = [wall for wall, _, _ in samples]
        print(
            f"  {label:<34}{statistics.median(walls) * 1e3:>11.0f}"
            f"{min(walls) * 1e3:>9.0f}{max(walls) * 1e3:>9.0f}"
            f"{statistics.median(u for _, u, _ in samples):>11.2f}"
            f"{statistics.median(s for _, _, s in samples):>7.2f}"
        )
    m = {label: statistics.median(w for w, _, _ in samples) for label, samples in times.items()}
    for ours, peer in (
        ("vs-control --all --start", "lxc-start -d each"),
        ("vs-control --all --stop", "lxc-stop, all at once"),
        ("vs-control --all --stop --kill", "lxc-stop -k each"),
    ):
        print(f"  ratio {ours} / {peer}: {m[ours] / m[peer]:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--guests", type=int, default=100)
    args = parser.parse_args()
    if not shutil.which("lxc-start"):
        subprocess.run(["./scripts/apt-missing.sh", "lxc"], check=True)
    version = subprocess.run(
        ["lxc-start", "--version"], capture_output=True, text=True, check=True
    ).stdout
    print(
        f"boot storm of {args.guests} busybox guests: kernel {os.uname().release}, "
        f"{len(os.sched_getaffinity(0))} CPUs, LXC {version.strip()}"
    )
    storm = Storm(Path(tempfile.mkdtemp(prefix="vstbench-")), args.guests)
    try:
        storm.setup()
        for network in (False, True):
            storm.set_network(network)
            times = measure(storm, args.rounds)
            what = "with network (vs-tools: and a 6-rule firewall each)"
            if not network:
                what = "no network"
            report(f"{args.guests} guests, {what}", times, args.rounds)
    finally:
        storm.cleanup()
        shutil.rmtree(storm.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
