"""What several benchmarks share: the six-rule firewall.conf of issue 17's figures, a guest.conf
for a busybox guest, the wall time of one command, the machine's CPU time, and the removal of a
run's cgroups."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

SIX_RULES = """enable
allow from 198.51.100.0/24 to tcp/22
allow from 0/0 to tcp/80
allow from 203.0.113.5 to tcp/5666
allow to 198.51.100.53 to udp/53
allow to 198.51.100.25 to tcp/25
deny to 0/0 to tcp/23
"""
GUEST = (
    "NAME={name}\nCONTEXT={context}\nIP={ip}\nRSS_LIMIT=64\nDISK_LIMIT=256\n"
    "TMPFS_LIMIT=8\nPROC_LIMIT=64\nCPU_LIMIT=1/2\n"
)


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    """Seconds ``argv`` took, its output discarded (it must succeed)."""
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def machine_cpu_s() -> tuple[float, float]:
    """CPU seconds the whole machine has spent so far, (user, system), from /proc/stat: what a
    command costs counted wherever it ran (its detached supervisors, the kernel's workers)."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    hz = os.sysconf("SC_CLK_TCK")
    return (user + nice) / hz, (system + irq + softirq) / hz


def remove_cgroups(parent: str) -> None:
    """Remove the run's cgroups ``parent`` and the groups under it, in every hierarchy."""
    for controller in Path("/sys/fs/cgroup").iterdir():
        for leftover in sorted(controller.glob(f"{parent}/*"), reverse=True):
            if leftover.is_dir():
                leftover.rmdir()
        if (controller / parent).exists():
            (controller / parent).rmdir()
