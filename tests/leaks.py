"""Find kernel objects whose name starts with a prefix (TESTING.md safety rule 3): network
namespaces, links, cgroups, mounts, nft tables, loop devices, LVM volumes, device-mapper
devices and processes."""

from __future__ import annotations

import glob
import os
import subprocess


def _lines(argv: list[str]) -> list[str]:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=10)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return []
    return proc.stdout.splitlines()


def find_leaks(prefix: str) -> list[str]:
    found: list[str] = []
    found += [
        f"netns {line.split()[0]}"
        for line in _lines(["ip", "netns", "list"])
        if line.startswith(prefix)
    ]
    for line in _lines(["ip", "-o", "link", "show"]):
        name = line.split(": ")[1].split("@")[0] if ": " in line else ""
        if name.startswith(prefix):
            found.append(f"link {name}")
    found += [
        f"cgroup {path}"
        # v2 groups sit right under /sys/fs/cgroup (the VM lab), v1 ones under a controller.
        for pattern in ("/sys/fs/cgroup/", "/sys/fs/cgroup/*/", "/sys/fs/cgroup/*/*/")
        for path in glob.glob(pattern + prefix + "*")
    ]
    with open("/proc/self/mounts") as mounts:
        found += [f"mount {line.split()[1]}" for line in mounts if prefix in line.split()[1]]
    found += [f"nft {line}" for line in _lines(["nft", "list", "tables"]) if prefix in line]
    found += [f"loop {line}" for line in _lines(["losetup", "-a"]) if prefix in line]
    # LVM volumes and groups, and any device-mapper device (the VM lab: this kernel has none).
    lvs = ["lvs", "--noheadings", "-o", "vg_name,lv_name"]
    found += [f"lvm {line.strip()}" for line in _lines(lvs) if prefix in line]
    found += [f"dm {line.split()[0]}" for line in _lines(["dmsetup", "ls"]) if prefix in line]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                args = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if prefix in args and int(pid) != os.getpid():
            found.append(f"process {pid}: {args.strip()[:120]}")
    return found
