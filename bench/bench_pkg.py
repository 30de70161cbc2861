"""Benchmark (issue 13): vs-pkg --install against vs-exec apt-get install with the firewall
opened by hand, and vs-pkg --all over 10 Debian guests. The scenario needs the test harness (a
Debian guest, a mirror namespace), so it lives in tests/pkg/test_bench.py; this runs it. As root:
    .venv/bin/python -m bench.bench_pkg [--rounds 5]
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
    args = parser.parse_args()
    env = {**os.environ, "VS_BENCH_ROUNDS": str(args.rounds)}
    argv = [sys.executable, "-m", "pytest", "tests/pkg/test_bench.py", "-m", "bench", "-q", "-s"]
    return subprocess.run(argv, cwd=ROOT, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
