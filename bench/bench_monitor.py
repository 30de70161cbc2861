"""Benchmark: CPU time per minute and resident memory of `vs-monitor --all` watching 100 and
1000 guests at a 60 s interval. Printed, never asserted.

1000 real guests do not fit on a test machine, so the guests are defined for real (guest.conf,
monitor.conf, a root directory) and "run" as one sleeping process each in a real cgroup of its
own (``vstbench<PID>/gNNNN`` in every hierarchy, a 100 MB memory and a 100-process limit): this
process holds each guest's lock as a supervisor would, so each check reads the guest's real
cgroup files, its init's /proc files (the thread's schedstat and stat) and the listening sockets
of its network namespace (the host's), statvfs of its /tmp. The root directories are empty: a
real guest's disk walk (at most every 5 minutes) is not in these figures. ``--cgroups fake``
measures as the earlier runs did: one sleeping init for all, and cgroup files that are plain
files in a tree laid out like /sys/fs/cgroup (VS_CGROUP_MOUNTS).

Two windows are measured: the one right after the first round (each guest's second check, as
the figures of issue 17 were first taken), then the next one, when every file the daemon keeps
exists: what a monitor running for days costs. PYTHONPATH is passed to the daemon, so another
tree's code can be measured with this venv (``PYTHONPATH=/tmp/old-tree``, run from that tree).

    .venv/bin/python -m bench.bench_monitor [--guests 100 1000] [--window 60] [--cgroups fake]
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.fakehost import FakeHost
from vstools.host.cgroup import Cgroup
from vstools.host.cgrouplayout import probe_layout

BIN = Path(sys.executable).parent
POLICY = "MONITOR_POOLING=60\nTMPFS_THRESHOLD=0\nMONITOR_REPEAT=0\n"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of the process, all its threads included."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_kb(pid: int) -> dict[str, int]:
    found = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                found[key] = int(value.split()[0])
    return found


def checks_done(fake: FakeHost, names: list[str]) -> int:
    return sum(1 for n in names if (s := fake.state_of(n)) and s.get("figures"))


class RealGroups:
    """One real cgroup per guest under ``vstbench<PID>``, each with a sleeping process in it;
    ``close`` kills them by PID and removes every group, even after a failure."""

    def __init__(self, parent: str, names: list[str]) -> None:
        self.layout = probe_layout()
        self.parent = parent
        self.groups: list[Cgroup] = []
        self.sleepers: list[subprocess.Popen[bytes]] = []
        try:
            for name in names:
                group = Cgroup(self.layout, f"{parent}/{name}")
                group.create()
                self.groups.append(group)
                group.set_memory_limit(100 << 20)
                group.set_pids_limit(100)
                sleeper = subprocess.Popen(["sleep", "3600"])
                self.sleepers.append(sleeper)
                group.add_pid(sleeper.pid)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Kill the sleepers (by PID), then remove the groups and their parent."""
        for sleeper in self.sleepers:
            sleeper.kill()
            sleeper.wait()
        for group in [*self.groups, Cgroup(self.layout, self.parent)]:
            group.destroy()


def run(
    guests: int, window_s: float, policy: str = POLICY, *, real: bool = True
) -> dict[str, float]:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # one lock fd per guest here too
    with tempfile.TemporaryDirectory(prefix="vstbench-") as tmp:
        parent = f"vstbench{os.getpid()}"
        fake = FakeHost(Path(tmp) / "host", parent=parent)
        fake.settings("SMTP_HOST=127.0.0.1\nSMTP_PORT=9\n")
        names = [f"g{i:04d}" for i in range(guests)]
        init = subprocess.Popen(["sleep", "3600"])
        groups = None
        try:
            if real:
                groups = RealGroups(parent, names)
            for index, name in enumerate(names, 1):
                fake.define(name, policy, index)
                if groups is None:
                    (fake.cg("cpuacct", name) / "tasks").write_text(f"{init.pid}\n")
                pid = groups.sleepers[index - 1].pid if groups else init.pid
                fake.start(name, pid)
            started = time.monotonic()
            env = dict(fake.env)
            if groups is not None:
                del env["VS_CGROUP_MOUNTS"]  # the kernel's hierarchies
            if os.environ.get("PYTHONPATH"):
                env["PYTHONPATH"] = os.environ["PYTHONPATH"]
            daemon = subprocess.Popen(
                [str(BIN / "vs-monitor"), "--all"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                # First round: every guest's first check, spread over the first 5 s.
                while checks_done(fake, names) < guests:
                    if daemon.poll() is not None:
                        raise SystemExit(f"vs-monitor exited: {daemon.stderr.read()}")  # type: ignore[union-attr]
                    time.sleep(0.2)
                first_round_s = time.monotonic() - started
                cpu_startup = cpu_s(daemon.pid)
                time.sleep(5)  # leave the start-up behind
                before = cpu_s(daemon.pid)
                time.sleep(window_s)
                middle = cpu_s(daemon.pid)
                time.sleep(window_s)
                after = cpu_s(daemon.pid)
                memory = memory_kb(daemon.pid)
            finally:
                daemon.send_signal(signal.SIGTERM)
                daemon.wait(timeout=60)
            errors = daemon.stderr.read()  # type: ignore[union-attr]
            if "check failed" in errors:
                raise SystemExit(f"vs-monitor's checks failed: {errors[-2000:]}")
        finally:
            init.kill()
            init.wait()
            fake.close()
            if groups is not None:
                groups.close()
    return {
        "guests": guests,
        "first_round_s": first_round_s,
        "cpu_startup_s": cpu_startup,
        "cpu_s_per_min": (middle - before) * 60 / window_s,
        "cpu_s_per_min_then": (after - middle) * 60 / window_s,
        "rss_mb": memory["VmRSS"] / 1024,
        "hwm_mb": memory["VmHWM"] / 1024,
        "threads": memory["Threads"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guests", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--window", type=float, default=60.0, help="seconds measured")
    parser.add_argument(
        "--no-sockets",
        action="store_true",
        help="MONITOR_SOCKETS=no: without the /proc/PID/net tables (the costly part: the"
        " kernel walks its whole TCP hash tables for each read)",
    )
    parser.add_argument(
        "--cgroups",
        choices=("real", "fake"),
        default="real",
        help="real: a cgroup and a sleeping process per guest (default); fake: plain files in"
        " a tree laid out like /sys/fs/cgroup and one process for all, as the earlier runs",
    )
    args = parser.parse_args()
    policy = POLICY + ("MONITOR_SOCKETS=no\n" if args.no_sockets else "")
    sockets = "no" if args.no_sockets else "yes"
    print(
        f"vs-monitor --all, MONITOR_POOLING=60, MONITOR_SOCKETS={sockets}, {args.cgroups} cgroups,"
        f" measured over two windows of {args.window:g} s per size"
    )
    print(
        "guests | first round s | CPU s at start | CPU s per minute, 1st window | 2nd window"
        " | CPU % (2nd) | RSS MB | peak MB"
    )
    for count in args.guests:
        r = run(count, args.window, policy, real=args.cgroups == "real")
        print(
            f"{r['guests']:>6} | {r['first_round_s']:>13.1f} | {r['cpu_startup_s']:>14.2f} |"
            f" {r['cpu_s_per_min']:>28.2f} | {r['cpu_s_per_min_then']:>10.2f} |"
            f" {100 * r['cpu_s_per_min_then'] / 60:>11.2f} | {r['rss_mb']:>6.1f} |"
            f" {r['hwm_mb']:>7.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
