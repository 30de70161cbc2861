"""Benchmarks of vs-pkg (tier ``bench``: on demand, prints figures, asserts no time):

- ``vs-pkg --install`` of a small package against ``vs-exec N -- apt-get install`` with the
  guest's firewall opened to the mirror by hand: the overhead of the proxy and firewall steps;
- ``vs-pkg --all --update_sources --install`` over 10 Debian guests, one at a time and four at
  once.

Run with ``bench/bench_pkg.py`` (or ``pytest tests/pkg/test_bench.py -m bench -s``)."""

from __future__ import annotations

import os
import statistics
import subprocess
import time

import pytest

from tests.guests import netns_prefix
from tests.pkg.conftest import GUEST, MIRROR_IP, MIRROR_NAME, PkgEnv

pytestmark = [pytest.mark.bench]
ROUNDS = int(os.environ.get("VS_BENCH_ROUNDS", "5"))


def _timed(run: object) -> float:
    start = time.perf_counter()
    run()  # type: ignore[operator]
    return time.perf_counter() - start


def _reset(env: PkgEnv, name: str = GUEST) -> None:
    """Remove the package and empty apt's cache, so every install downloads (not timed)."""
    env.host.exec(name, "sh", "-c", "apt-get -qq -y remove vsthello >/dev/null; apt-get clean")


def test_bench_install_through_vs_pkg_and_by_hand(pkg_env: PkgEnv) -> None:
    ns = netns_prefix(pkg_env.host.netns)
    pkg_env.pkg("--name", GUEST, "--update_sources")
    by_hand = [
        "env",
        "DEBIAN_FRONTEND=noninteractive",
        "apt-get",
        "-q",
        "-y",
        "-o",
        "Acquire::http::Proxy=DIRECT",
        "install",
        "vsthello",
    ]
    hosts = pkg_env.rootfs() / "etc" / "hosts"
    saved_hosts = hosts.read_text()
    rule = f"ip daddr {MIRROR_IP} tcp dport 80 return"
    vs_pkg: list[float] = []
    manual: list[float] = []
    for _ in range(ROUNDS):
        _reset(pkg_env)
        vs_pkg.append(_timed(lambda: pkg_env.pkg("--name", GUEST, "--install", "vsthello")))
        _reset(pkg_env)
        # The firewall opened by hand (what the original did, narrowed to the mirror) and the
        # mirror's name in the guest's hosts file (its DNS is denied).
        hosts.write_text(saved_hosts + f"{MIRROR_IP} {MIRROR_NAME}\n")
        subprocess.run(
            [*ns, "nft", "insert", "rule", "inet", "vstools", "out_deb", *rule.split()], check=True
        )
        try:
            manual.append(_timed(lambda: pkg_env.host.exec(GUEST, *by_hand)))
        finally:
            handles = subprocess.run(
                [*ns, "nft", "-a", "list", "chain", "inet", "vstools", "out_deb"],
                capture_output=True,
                text=True,
                check=True,
            )
            for line in handles.stdout.splitlines():
                if rule in line:
                    handle = line.rsplit("# handle ", 1)[1].strip()
                    subprocess.run(
                        [
                            *ns,
                            "nft",
                            "delete",
                            "rule",
                            "inet",
                            "vstools",
                            "out_deb",
                            "handle",
                            handle,
                        ],
                        check=True,
                    )
            hosts.write_text(saved_hosts)
    print(
        f"\nbench_pkg install ({ROUNDS} rounds, median):"
        f" vs-pkg --install {statistics.median(vs_pkg):.2f} s;"
        f" vs-exec apt-get install, firewall opened by hand {statistics.median(manual):.2f} s;"
        f" overhead {statistics.median(vs_pkg) - statistics.median(manual):+.2f} s"
    )


def test_bench_all_over_ten_guests(pkg_env: PkgEnv) -> None:
    names = [GUEST]
    for index in range(9):
        name = f"deb{index}"
        pkg_env.add_debian(name, f"198.51.100.{40 + index}")
        names.append(name)
    figures = {}
    for jobs in ("1", "4"):
        for name in names:
            _reset(pkg_env, name)
        figures[jobs] = _timed(
            lambda jobs=jobs: pkg_env.pkg(
                "--all", "--jobs", jobs, "--update_sources", "--install", "vsthello", timeout=900
            )
        )
    print(
        f"\nbench_pkg --all over {len(names)} guests (update + install, each through its own"
        f" proxy): --jobs 1 {figures['1']:.2f} s, --jobs 4 {figures['4']:.2f} s"
    )
