"""Benchmark: CPU time per minute and resident memory of `vs-monitor --all` watching 100 and
1000 guests at a 60 s interval. Printed, never asserted.

1000 real guests do not fit on a test machine, so the guests are defined for real (guest.conf,
monitor.conf, a root directory) and "run" on a fake cgroup tree laid out like /sys/fs/cgroup
(VS_CGROUP_MOUNTS points the daemon at it): this process holds each guest's lock as a supervisor
would, and every guest's init is one sleeping child, so each check reads real /proc files (the
thread's schedstat and stat, /proc/PID/net/{tcp,tcp6,udp,udp6,unix} of the host's namespace,
statvfs of /tmp) as it would for a real guest. The root directories are empty: a real guest's
disk walk (at most every 5 minutes) is not in these figures.

Two windows are measured: the one right after the first round (each guest's second check, as
the figures of issue 17 were first taken), then the next one, when every file the daemon keeps
exists: what a monitor running for days costs. PYTHONPATH is passed to the daemon, so another
tree's code can be measured with this venv (``PYTHONPATH=/tmp/old-tree``, run from that tree).

    .venv/bin/python -m bench.bench_monitor [--guests 100 1000] [--window 60]
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


def run(guests: int, window_s: float, policy: str = POLICY) -> dict[str, float]:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # one lock fd per guest here too
    with tempfile.TemporaryDirectory(prefix="vstbench-") as tmp:
        fake = FakeHost(Path(tmp) / "host")
        fake.settings("SMTP_HOST=127.0.0.1\nSMTP_PORT=9\n")
        init = subprocess.Popen(["sleep", "3600"])
        names = [f"g{i:04d}" for i in range(guests)]
        try:
            for index, name in enumerate(names, 1):
                fake.define(name, policy, index)
                (fake.cg("cpuacct", name) / "tasks").write_text(f"{init.pid}\n")
                fake.start(name, init.pid)
            started = time.monotonic()
            env = dict(fake.env)
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
        finally:
            init.kill()
            init.wait()
            fake.close()
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
    args = parser.parse_args()
    policy = POLICY + ("MONITOR_SOCKETS=no\n" if args.no_sockets else "")
    sockets = "no" if args.no_sockets else "yes"
    print(
        f"vs-monitor --all, MONITOR_POOLING=60, MONITOR_SOCKETS={sockets},"
        f" measured over two windows of {args.window:g} s per size"
    )
    print(
        "guests | first round s | CPU s at start | CPU s per minute, 1st window | 2nd window"
        " | CPU % (2nd) | RSS MB | peak MB"
    )
    for count in args.guests:
        r = run(count, args.window, policy)
        print(
            f"{r['guests']:>6} | {r['first_round_s']:>13.1f} | {r['cpu_startup_s']:>14.2f} |"
            f" {r['cpu_s_per_min']:>28.2f} | {r['cpu_s_per_min_then']:>10.2f} |"
            f" {100 * r['cpu_s_per_min_then'] / 60:>11.2f} | {r['rss_mb']:>6.1f} |"
            f" {r['hwm_mb']:>7.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
