"""Benchmarks of vs-pkg (tier ``bench``: on demand, prints figures, asserts no time):

- ``vs-pkg --install`` of a small package against ``vs-exec N -- apt-get install`` with the
  guest's firewall opened to the mirror by hand: the overhead of the proxy and firewall steps;
- ``vs-pkg --all --update_sources --install`` over 10 Debian guests: tinyproxy (one at a time
  and four at once) beside PKG_CACHE=apt-cacher-ng, whose cache the guests share.

Run with ``bench/bench_pkg.py`` (or ``pytest tests/pkg/test_bench.py -m bench -s``)."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

import pytest

from tests.guests import netns_prefix
from tests.pkg.conftest import GUEST, MIRROR_IP, MIRROR_NAME, PkgEnv

pytestmark = [pytest.mark.bench]
ROUNDS = int(os.environ.get("VS_BENCH_ROUNDS", "5"))


def _timed(run: object) -> float:
    start = time.perf_counter()
    run()  # type: ignore[operator]
    return time.perf_counter() - start


def _reset(env: PkgEnv, name: str = GUEST, package: str = "vsthello") -> None:
    """Remove the package and empty apt's cache, so every install downloads (not timed)."""
    env.host.exec(name, "sh", "-c", f"apt-get -qq -y remove {package} >/dev/null; apt-get clean")


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


MIRROR_MBIT = int(os.environ.get("VS_BENCH_MIRROR_MBIT", "100"))
PAYLOAD_KB = int(os.environ.get("VS_BENCH_PAYLOAD_KB", "4096"))
BIG = "vstbig"
# (label, PKG_CACHE, --jobs, cache emptied before the run)
ALL_MODES = (
    ("tinyproxy (PKG_CACHE=none)", "none", "1", False),
    ("tinyproxy, --jobs 4", "none", "4", False),
    ("apt-cacher-ng, cache empty", "apt-cacher-ng", "1", True),
    ("apt-cacher-ng, cache warm", "apt-cacher-ng", "1", False),
)


def test_bench_all_over_ten_guests_with_and_without_the_cache(pkg_env: PkgEnv) -> None:
    """``vs-pkg --all --update_sources --install`` of one package over 10 guests: tinyproxy
    (no cache; also with --jobs 4) beside PKG_CACHE=apt-cacher-ng with its cache emptied first
    (one guest downloads, nine are served from the cache) and already holding the package.
    The mirror's link is shaped to VS_BENCH_MIRROR_MBIT (0: as fast as the machine), the
    package has VS_BENCH_PAYLOAD_KB of incompressible bytes; the mirror's own log counts the
    downloads of the package each run."""
    names = [GUEST]
    for index in range(9):
        name = f"deb{index}"
        pkg_env.add_debian(name, f"198.51.100.{40 + index}")
        names.append(name)
    pkg_env.mirror.publish(BIG, "1.0", payload_kb=PAYLOAD_KB)
    deb = f"/pool/{BIG}_1.0_all.deb"
    if MIRROR_MBIT:
        subprocess.run(
            [*netns_prefix(pkg_env.lan.netns), "tc", "qdisc", "add", "dev", "lan0", "root",
             "tbf", "rate", f"{MIRROR_MBIT}mbit", "burst", "64kb", "latency", "100ms"],
            check=True,
        )  # fmt: skip
    conf = Path(pkg_env.host.env["VS_ETC_DIR"]) / "vs-tools.conf"
    base_conf = conf.read_text()
    cache = Path(pkg_env.host.env["VS_STATE_DIR"]) / "pkg-cache" / "apt-cacher-ng"

    def run(mode: tuple[str, str, str, bool]) -> tuple[float, int, int]:
        """One --all run in ``mode`` after every guest removed the package: (s, .deb GETs,
        requests) at the mirror."""
        _label, setting, jobs, empty = mode
        for name in names:
            _reset(pkg_env, name, BIG)
        conf.write_text(base_conf + f"PKG_CACHE={setting}\n")
        if empty:
            shutil.rmtree(cache, ignore_errors=True)
        gets, requests = pkg_env.mirror.requests(deb), pkg_env.mirror.requests()
        seconds = _timed(
            lambda: pkg_env.pkg(
                "--all", "--jobs", jobs, "--update_sources", "--install", BIG, timeout=1800
            )
        )
        return (
            seconds,
            pkg_env.mirror.requests(deb) - gets,
            pkg_env.mirror.requests() - requests,
        )

    run(ALL_MODES[3])  # fills the cache and warms the page cache (not counted)
    times: dict[str, list[float]] = {mode[0]: [] for mode in ALL_MODES}
    downloads: dict[str, list[int]] = {mode[0]: [] for mode in ALL_MODES}
    requests: dict[str, list[int]] = {mode[0]: [] for mode in ALL_MODES}
    for round_index in range(ROUNDS):
        order = ALL_MODES if round_index % 2 == 0 else tuple(reversed(ALL_MODES))
        for mode in order:
            seconds, gets, asked = run(mode)
            times[mode[0]].append(seconds)
            downloads[mode[0]].append(gets)
            requests[mode[0]].append(asked)
    conf.write_text(base_conf)
    link = f"{MIRROR_MBIT} Mbit/s" if MIRROR_MBIT else "unshaped"
    print(
        f"\nbench_pkg --all over {len(names)} guests, --update_sources --install {BIG}"
        f" ({PAYLOAD_KB} KiB), mirror link {link}, median of {ROUNDS} alternating rounds"
    )
    print(
        f"{'proxy':<30}{'median s':>9}{'min s':>8}{'max s':>8}{'ratio':>7}{'.deb GETs':>11}"
        f"{'requests':>10}  (at the mirror, per run)"
    )
    base = statistics.median(times[ALL_MODES[0][0]])
    for label, values in times.items():
        median = statistics.median(values)
        gets = "/".join(str(g) for g in sorted(set(downloads[label])))
        asked = statistics.median(requests[label])
        print(
            f"{label:<30}{median:>9.2f}{min(values):>8.2f}{max(values):>8.2f}"
            f"{median / base:>7.2f}{gets:>11}{asked:>10.0f}"
        )
