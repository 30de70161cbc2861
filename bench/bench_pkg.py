"""Benchmark (issue 13): vs-pkg --install against vs-exec apt-get install with the firewall
opened by hand, and vs-pkg --all over 10 Debian guests with tinyproxy beside the shared cache of
PKG_CACHE=apt-cacher-ng. The scenario needs the test harness (a Debian guest, a mirror
namespace), so it lives in tests/pkg/test_bench.py; this runs it. As root:
    .venv/bin/python -m bench.bench_pkg [--rounds 5] [--mirror-mbit 100] [--payload-kb 4096]
    [--only all|install]
VS_DEBIAN_TEMPLATE=/path/bookworm.tar skips the debootstrap. Prints figures; asserts no time."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    """Run the pkg benchmarks through pytest, printing their figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--mirror-mbit", type=int, default=100, help="the mirror's link (0: unshaped)"
    )
    parser.add_argument("--payload-kb", type=int, default=4096, help="size of the --all package")
    parser.add_argument("--only", choices=["all", "install"], help="one of the two benchmarks")
    args = parser.parse_args()
    env = {
        **os.environ,
        "VS_BENCH_ROUNDS": str(args.rounds),
        "VS_BENCH_MIRROR_MBIT": str(args.mirror_mbit),
        "VS_BENCH_PAYLOAD_KB": str(args.payload_kb),
    }
    argv = [sys.executable, "-m", "pytest", "tests/pkg/test_bench.py", "-m", "bench", "-q", "-s"]
    if args.only:
        argv += ["-k", "ten_guests" if args.only == "all" else "by_hand"]
    return subprocess.run(argv, cwd=ROOT, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
