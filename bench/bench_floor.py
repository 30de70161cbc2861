"""Benchmark (issue 17): how much of a `vs-control --start` is the interpreter and its imports,
and how much the start's own work. Measured alternately in one run:

- ``cold``: `vs-control --name N --start` in a new process, as an administrator runs it;
- ``warm``: the same start forked from this process, which has already imported every module of
  a start (and loaded libseccomp, and pyroute2 with ``--network``): the start's work alone;
- ``layers``: a new interpreter importing the modules a start runs in (``vstools.guest.start``:
  the guest, runtime, storage and host layers), without the command line;
- ``floor``: `python -I -c pass`, the interpreter alone.

With ``--network`` the guest has its veth, routes and six-rule firewall, as bench_start's, in a
network namespace of the run. The guest is stopped (killed) after each start. Run as root:
    .venv/bin/python -m bench.bench_floor [--rounds 11] [--network]
Prints figures; asserts nothing about time."""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.bench_start import unwire, wire
from bench.common import GUEST, remove_cgroups
from harness.scratch import make_scratch_host
from vstools.guest.templates import build_busybox_rootfs
from vstools.host.syscalls import CLONE_NEWNET, setns

BIN = Path(sys.executable).parent


def scratch_host(work: Path, parent: str) -> dict[str, str]:
    """The VS_* directories under ``work`` and the busybox guest "b" (no network)."""
    env = make_scratch_host(work, f"CGROUP_PARENT={parent}\nSTOP_TIMEOUT=5\nSYSLOG=no\n")
    build_busybox_rootfs(work / "root" / "b")
    (work / "guests" / "b").mkdir()
    (work / "guests" / "b" / "guest.conf").write_text(
        GUEST.format(name="b", context=1, ip="198.51.100.1")
    )
    return env


def warm_up(network: bool) -> Callable[[list[str]], int]:
    """Import what a start imports (and load what a storm preloads); vs-control's main."""
    import vstools.guest.start
    from vstools.cli import vs_control
    from vstools.runtime.sandbox import preload

    preload()
    if network:
        import vstools.host.nftlib
        import vstools.net.routed  # noqa: F401
        from vstools.host.netlink import preload as preload_netlink

        preload_netlink()
    return vs_control.main


def measure(env: dict[str, str], name: str, rounds: int, network: bool) -> dict[str, list[float]]:
    """Wall seconds of each way, alternately, ``rounds`` times."""
    main = warm_up(network)
    control = str(BIN / "vs-control")

    def cold() -> None:
        subprocess.run(
            [control, "--name", name, "--start"], env=env, check=True, capture_output=True
        )

    def warm() -> None:
        pid = os.fork()
        if pid == 0:  # the start alone, in a copy of this warm process
            devnull = os.open("/dev/null", os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            try:
                code = main(["--name", name, "--start"])  # it ends with os._exit itself
            except BaseException:
                os._exit(70)
            os._exit(code or 0)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"the warm start failed ({status})")

    def layers() -> None:
        subprocess.run([sys.executable, "-I", "-c", "import vstools.guest.start"], check=True)

    def floor() -> None:
        subprocess.run([sys.executable, "-I", "-c", "pass"], check=True)

    ways: dict[str, Callable[[], None]] = {
        "cold vs-control --start": cold,
        "warm: the start alone": warm,
        "import vstools.guest.start": layers,
        "python -I -c pass": floor,
    }
    times: dict[str, list[float]] = {label: [] for label in ways}
    for _ in range(rounds):
        for label, way in ways.items():
            started = time.perf_counter()
            way()
            times[label].append(time.perf_counter() - started)
            if way in (cold, warm):
                subprocess.run(
                    [control, "--name", name, "--stop", "--kill"],
                    env=env,
                    check=True,
                    capture_output=True,
                )
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--network", action="store_true", help="the networked guest")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vstbench-"))
    parent = f"vstbench{os.getpid()}"
    env = scratch_host(work, parent)
    try:
        name = "b"
        if args.network:
            wire(work, parent)
            name = "n"
            fd = os.open(f"/run/netns/{parent}-host", os.O_RDONLY | os.O_CLOEXEC)
            try:
                setns(fd, CLONE_NEWNET)  # this process and every command it runs
            finally:
                os.close(fd)
        os.environ.clear()
        os.environ.update(env)  # the warm start reads its host from the environment
        times = measure(env, name, args.rounds, args.network)
    finally:
        subprocess.run(
            [str(BIN / "vs-control"), "--all", "--stop", "--kill", "--yes"],
            env=env,
            capture_output=True,
            check=False,
        )
        if args.network:
            unwire(parent)
        remove_cgroups(parent)
        shutil.rmtree(work, ignore_errors=True)
    network = "with network and a six-rule firewall" if args.network else "no network"
    print(
        f"start of a busybox guest ({network}), median of {args.rounds} alternating rounds"
        f" (kernel {os.uname().release}, {os.cpu_count()} CPUs)"
    )
    print(f"{'':30s} median ms   min ms   max ms")
    for label, values in times.items():
        print(
            f"{label:30s} {statistics.median(values) * 1e3:9.1f} {min(values) * 1e3:8.1f}"
            f" {max(values) * 1e3:8.1f}"
        )
    floor = statistics.median(times["python -I -c pass"])
    alone = statistics.median(times["warm: the start alone"])
    print(f"the start alone + the interpreter: {(alone + floor) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
