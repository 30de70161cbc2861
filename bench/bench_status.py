"""Benchmark (issue 17): `vs-control --all` (status only) with 102 defined, stopped guests,
beside the floor of any Python command, `python -I -c pass` with the venv's interpreter,
measured alternately (A B A B) in one run. Run as root or not:
    .venv/bin/python -m bench.bench_status [--rounds 21]
Prints figures and ratios; asserts nothing about time."""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from bench.common import GUEST, timed
from harness.scratch import make_scratch_host

BIN = Path(sys.executable).parent
GUESTS = 102


def define(work: Path) -> dict[str, str]:
    """A scratch host with ``GUESTS`` defined guests (stopped: status reads their files and
    their run directories only)."""
    env = make_scratch_host(work)
    for index in range(GUESTS):
        name = f"s{index:03d}"
        (work / "guests" / name).mkdir()
        (work / "guests" / name / "guest.conf").write_text(
            GUEST.format(name=name, context=100 + index, ip=f"198.51.100.{10 + index}")
        )
    return env


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=21)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vstbench-"))
    try:
        env = define(work)
        peers = {
            "vs-control --all": ([str(BIN / "vs-control"), "--all"], env),
            "python -I -c pass": ([sys.executable, "-I", "-c", "pass"], None),
        }
        times: dict[str, list[float]] = {label: [] for label in peers}
        for round_index in range(args.rounds):
            order = list(peers) if round_index % 2 == 0 else list(reversed(peers))
            for label in order:
                argv, environ = peers[label]
                times[label].append(timed(argv, environ))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    floor = statistics.median(times["python -I -c pass"])
    print(
        f"status of {GUESTS} defined guests, median of {args.rounds} alternating rounds "
        f"(kernel {os.uname().release}, {len(os.sched_getaffinity(0))} CPUs, "
        f"Python {platform.python_version()} {sys.executable})"
    )
    print(f"{'command':<22}{'median ms':>10}{'min ms':>9}{'max ms':>9}{'× floor':>9}")
    for label, values in times.items():
        median = statistics.median(values)
        print(
            f"{label:<22}{median * 1e3:>10.1f}{min(values) * 1e3:>9.1f}"
            f"{max(values) * 1e3:>9.1f}{median / floor:>9.2f}"
        )
    print("goal (issue 17): vs-control --all at most 3.00 × python -I -c pass")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
