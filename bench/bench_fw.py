"""Benchmark (issues 4 and 17): firewall loads and guest starts with network, in one run. As root:
    .venv/bin/python -m bench.bench_fw [--rounds 5] [--skip-start]

1. Loading the firewall of 10, 100 and 1000 guests with 6 rules each: vs-tools' nftables
   backend (first load, and the in-place refresh of the loaded table, both as ``vs-net`` does
   them: through libnftables in this process), one `iptables-restore --noflush` of the same
   rules, and one `iptables` call per rule (what the original VS-Tools did). The three are
   measured alternately in each round.
2. Changing one guest in a 1000-guest ruleset: the backend's update (reading the verdict maps,
   one transaction), beside the floor of any nft change, `nft -f` of an empty transaction,
   measured alternately; and the iptables-restore backend (it reloads all of the toolkit's
   chains), and per-rule `iptables` calls for that guest's chains.
3. `vs-control --start` of one busybox guest with its network (veth, routes, proxy ARP, rule,
   firewall) and without, and `vs-control --all --start` of 100 guests with network.

Everything happens in network namespaces made for the run (prefix vstbench) and removed after.
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
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address
from pathlib import Path

from bench.common import GUEST, SIX_RULES
from harness.scratch import make_scratch_host
from vstools.config.firewall import parse_firewall
from vstools.firewall.backends import Nftables
from vstools.firewall.model import Ruleset, compile_guest, no_resolver
from vstools.firewall.render import render_nft
from vstools.firewall.render_ipt import render_iptables
from vstools.guest.templates import build_busybox_rootfs
from vstools.host.syscalls import CLONE_NEWNET, setns

BIN = Path(sys.executable).parent
PER_RULE_BUDGET_S = 60.0  # one iptables call per rule for 1000 guests takes many minutes


def ruleset(count: int, rules: str = SIX_RULES) -> Ruleset:
    conf = parse_firewall("firewall.conf", rules)
    guests = []
    for index in range(count):
        ip = IPv4Address(int(IPv4Address("198.18.0.10")) + index)
        guests.append(compile_guest(conf, f"g{index:04d}", ip, f"vs{1000 + index}", no_resolver))
    return Ruleset(tuple(guests))


@contextlib.contextmanager
def netns(name: str) -> Iterator[str]:
    subprocess.run(["ip", "netns", "add", name], check=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        setns(target, CLONE_NEWNET)
        yield name
    finally:
        setns(home, CLONE_NEWNET)
        os.close(home)
        os.close(target)
        subprocess.run(["ip", "netns", "del", name], check=False)


def sh(argv: list[str], text: str | None = None) -> str:
    return subprocess.run(argv, input=text, text=True, capture_output=True, check=True).stdout


def clock(action: Callable[..., object], *args: object) -> float:
    start = time.perf_counter()
    action(*args)
    return time.perf_counter() - start


def per_rule_calls(text: str) -> list[list[str]]:
    """The iptables-restore file as the original ran it: one iptables call per line."""
    calls = []
    for line in text.splitlines():
        if line.startswith(":"):
            calls.append(["iptables", "-N", line[1:].split()[0]])
        elif line.startswith(("-A ", "-I ")):
            calls.append(["iptables", *_split(line)])
    return calls


def _split(line: str) -> list[str]:
    import shlex

    return shlex.split(line)


def run_calls(calls: list[list[str]], budget_s: float = float("inf")) -> tuple[float, int]:
    """Run the calls in order until done or out of budget: (seconds, calls run)."""
    start = time.perf_counter()
    for done, argv in enumerate(calls):
        if time.perf_counter() - start > budget_s:
            return time.perf_counter() - start, done
        subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - start, len(calls)


def row(label: str, seconds: float, base: float | None) -> str:
    ratio = f"{seconds / base:>8.2f}" if base else f"{'':>8}"
    return f"  {label:<44}{seconds * 1e3:>11.1f}{ratio}"


def load_nft(full: Ruleset) -> None:
    """Read what is loaded, render and load the whole ruleset, as ``vs-net --all --fw up``
    does (``Firewall.load_all``): in a namespace without the table, the first load; with it,
    the refresh in place."""
    Nftables().apply(lambda: full, full.guests, [], refresh=True)


def constant(value: Ruleset) -> Callable[[], Ruleset]:
    return lambda: value


def spread(values: list[float]) -> str:
    return f"(min {min(values) * 1e3:.1f}, max {max(values) * 1e3:.1f}, n={len(values)})"


def loads(rounds: int, counts: tuple[int, ...]) -> None:
    print(f"Firewall load, 6 rules per guest (median of {rounds}; per-rule iptables: 1 run)")
    print(f"  {'':<44}{'ms':>11}{'ratio':>8}")
    for count in counts:
        full = ruleset(count)
        first: list[float] = []
        refresh: list[float] = []
        restore: list[float] = []
        for index in range(rounds):
            for step in ("nft", "restore") if index % 2 == 0 else ("restore", "nft"):
                with netns(f"vstbench-{os.getpid()}-{count}-{step}{index}"):
                    if step == "nft":
                        first.append(clock(load_nft, full))
                        refresh.append(clock(load_nft, full))
                    else:
                        text = render_iptables(full, missing_hooks=["FORWARD", "INPUT", "OUTPUT"])
                        restore.append(clock(sh, ["iptables-restore", "--noflush"], text))
        with netns(f"vstbench-{os.getpid()}-{count}-calls"):
            calls = per_rule_calls(render_iptables(full, missing_hooks=["FORWARD"]))
            per_rule, done = run_calls(calls, budget_s=PER_RULE_BUDGET_S)
        base = statistics.median(first)
        print(
            f" {count} guests ({sum(len(g.inbound) + len(g.outbound) for g in full.guests)}"
            f" compiled rules, {len(calls)} iptables calls)"
        )
        print(row("vs-tools nftables, first load", base, base) + "  " + spread(first))
        print(
            row("vs-tools nftables, refresh of the loaded table", statistics.median(refresh), base)
            + "  "
            + spread(refresh)
        )
        print(
            row("one iptables-restore --noflush", statistics.median(restore), base)
            + "  "
            + spread(restore)
        )
        print(
            f"  goals (issue 17): first load / iptables-restore ="
            f" {base / statistics.median(restore):.2f} (<= 0.5);"
            f" refresh / first load = {statistics.median(refresh) / base:.2f} (<= 1.0)"
        )
        if done == len(calls):
            print(row("one iptables call per rule (the original)", per_rule, base))
        else:  # each call reads the whole ruleset: later calls cost more, this is a floor
            projected = per_rule / done * len(calls)
            label = f"one iptables call per rule, projected from {done} calls"
            print(row(label, projected, base) + "  (at least)")


def update(rounds: int) -> None:
    full = ruleset(1000)
    changed = compile_guest(
        parse_firewall("firewall.conf", SIX_RULES + "allow from 0/0 to tcp/443\n"),
        full.guests[500].name,
        full.guests[500].ip,
        full.guests[500].ifname,
        no_resolver,
    )
    after = full.replace(changed)
    nft_times: list[float] = []
    empty_times: list[float] = []
    restore_times: list[float] = []
    with netns(f"vstbench-{os.getpid()}-update"):
        sh(["nft", "-f", "-"], render_nft(full))
        sh(["iptables-restore", "--noflush"], render_iptables(full, missing_hooks=["FORWARD"]))
        for index in range(rounds):
            # What vs-net --fw up / a guest's start does: read the verdict maps, one update
            # (alternately the changed rules and the original ones, so each round changes them).
            ruleset_now, guest_now = (
                (after, changed) if index % 2 == 0 else (full, full.guests[500])
            )
            for step in ("update", "empty") if index % 2 == 0 else ("empty", "update"):
                if step == "update":
                    nft_times.append(
                        clock(Nftables().apply, constant(ruleset_now), [guest_now], [])
                    )
                else:
                    empty_times.append(clock(sh, ["nft", "-f", "-"], ""))
            restore_times.append(
                clock(lambda: sh(["iptables-restore", "--noflush"], render_iptables(after)))
            )
        chains = {f"{changed.ifname}-in", f"{changed.ifname}-out"}
        calls = [["iptables", "-F", c] for c in sorted(chains)] + [
            call
            for call in per_rule_calls(render_iptables(after))
            if call[1] == "-A" and call[2] in chains
        ]
        per_rule, _ = run_calls(calls)
    base = statistics.median(nft_times)
    floor = statistics.median(empty_times)
    print(f"\nOne guest's rules changed in a 1000-guest ruleset (median of {rounds})")
    print(row("vs-tools nft update (incl. reading state)", base, base) + "  " + spread(nft_times))
    print(row("nft -f of an empty transaction (floor)", floor, base) + "  " + spread(empty_times))
    print(f"  goal (issue 17): update / empty nft -f = {base / floor:.2f} (<= 2.0)")
    print(
        row("iptables-restore of all the toolkit's chains", statistics.median(restore_times), base)
    )
    print(row(f"iptables -F + one call per rule ({len(calls)} calls)", per_rule, base))


def starts(rounds: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="vstbench-"))
    parent = f"vstbench{os.getpid()}"
    host, lan = f"{parent}-host", f"{parent}-lan"
    env = make_scratch_host(work, f"CGROUP_PARENT={parent}\nSTOP_TIMEOUT=5\n")
    (work / "etc" / "networks.conf").write_text("0,198.18.0.0/16,198.18.0.1\n")
    (work / "etc" / "create.conf").write_text("DEFAULT_DEVICE=up0\n")
    template = build_busybox_rootfs(work / "template")
    enter = ["nsenter", f"--net=/run/netns/{host}", "--"]

    def define(name: str, context: int, ip: str, firewall: bool) -> None:
        shutil.copytree(template, work / "root" / name, symlinks=True)
        (work / "guests" / name).mkdir()
        (work / "guests" / name / "guest.conf").write_text(
            GUEST.format(name=name, context=context, ip=ip)
        )
        if firewall:
            (work / "guests" / name / "firewall.conf").write_text(SIX_RULES)

    def control(*argv: str) -> float:
        start = time.perf_counter()
        subprocess.run(
            [*enter, str(BIN / "vs-control"), *argv], env=env, check=True, capture_output=True
        )
        return time.perf_counter() - start

    subprocess.run(["ip", "netns", "add", host], check=True)
    subprocess.run(["ip", "netns", "add", lan], check=True)
    try:
        ip = ["ip", "-n", host]
        subprocess.run(
            [*ip, "link", "add", "up0", "type", "veth", "peer", "name", "lan0", "netns", lan],
            check=True,
        )
        subprocess.run([*ip, "addr", "add", "198.18.0.2/16", "dev", "up0"], check=True)
        subprocess.run([*ip, "link", "set", "up0", "up"], check=True)
        subprocess.run(["ip", "-n", lan, "addr", "add", "198.18.0.1/16", "dev", "lan0"], check=True)
        subprocess.run(["ip", "-n", lan, "link", "set", "lan0", "up"], check=True)
        define("net", 1, "198.18.0.10", firewall=True)
        define("bare", 2, "203.0.113.10", firewall=False)  # no network holds it: loopback only
        with_net, without = [], []
        for index in range(rounds):
            for label in ("net", "bare") if index % 2 == 0 else ("bare", "net"):
                elapsed = control("--name", label, "--start")
                control("--name", label, "--stop")
                (with_net if label == "net" else without).append(elapsed)
        base = statistics.median(without)
        print(f"\nvs-control --start of a busybox guest (median of {rounds}, alternating)")
        print(row("without network", base, base))
        print(row("with network and a 6-rule firewall", statistics.median(with_net), base))
        shutil.rmtree(work / "root" / "bare")
        shutil.rmtree(work / "guests" / "bare")
        for index in range(99):
            define(f"s{index:03d}", 100 + index, f"198.18.1.{index + 10}", firewall=True)
        elapsed = control("--all", "--start")
        print(row("vs-control --all --start, 100 guests with network", elapsed, None))
        elapsed = control("--all", "--stop")
        print(row("vs-control --all --stop, 100 guests with network", elapsed, None))
    finally:
        subprocess.run(
            [*enter, str(BIN / "vs-control"), "--all", "--stop"],
            env=env,
            capture_output=True,
            check=False,
        )
        subprocess.run(["ip", "netns", "del", host], check=False)
        subprocess.run(["ip", "netns", "del", lan], check=False)
        for controller in Path("/sys/fs/cgroup").iterdir():
            for leftover in sorted(controller.glob(f"{parent}/*"), reverse=True):
                with contextlib.suppress(OSError):
                    leftover.rmdir()
            with contextlib.suppress(OSError):
                (controller / parent).rmdir()
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-start", action="store_true")
    args = parser.parse_args()
    print(
        f"kernel {os.uname().release}, {len(os.sched_getaffinity(0))} CPUs, "
        f"{sh(['nft', '--version']).strip()}, {sh(['iptables', '--version']).strip()}"
    )
    ours = ["nft", "list", "table", "inet", "vstools"]
    if subprocess.run(ours, capture_output=True, check=False).returncode == 0:
        print("refused: this namespace has a table inet vstools already (not the run's to touch)")
        return 1
    try:
        loads(args.rounds, (10, 100, 1000))
        update(args.rounds)
        if not args.skip_start:
            starts(args.rounds)
    finally:
        # Everything loads in namespaces made for the run: a table here would be a leak.
        leaked = subprocess.run(ours, capture_output=True, check=False).returncode == 0
        if leaked:
            subprocess.run(["nft", "delete", "table", "inet", "vstools"], check=False)
            print("LEAK: a table inet vstools was loaded in this namespace; removed")
    return 1 if leaked else 0


if __name__ == "__main__":
    raise SystemExit(main())
