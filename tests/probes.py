"""Capability probes for the test tiers: each returns None when the capability is there, or the
reason it is not (shown in the run header and as the skip reason)."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess


@functools.cache
def probe_root() -> str | None:
    return None if os.geteuid() == 0 else "not root"


@functools.cache
def probe_namespaces() -> str | None:
    if probe_root():
        return probe_root()
    if shutil.which("unshare") is None:
        return "unshare(1) not installed"
    proc = subprocess.run(
        ["unshare", "--mount", "--net", "--pid", "--fork", "--uts", "--ipc", "true"],
        capture_output=True,
        text=True,
        check=False,
    )
    return None if proc.returncode == 0 else f"unshare failed: {proc.stderr.strip()}"


@functools.cache
def probe_openat2() -> str | None:
    from vstools.host.rootfs import probe_openat2 as probe

    return probe()


@functools.cache
def probe_lab() -> str | None:
    from tests.lab.vm import probe_lab as probe

    return probe()


@functools.cache
def probe_debootstrap() -> str | None:
    missing = [t for t in ("debootstrap", "dpkg-buildpackage", "make") if not shutil.which(t)]
    return f"not installed: {', '.join(missing)}" if missing else None


TIER_PROBES = {
    "privileged": (probe_root, probe_namespaces),
    "e2e": (probe_root, probe_namespaces),
    "lab": (probe_root, probe_lab),
    "deb": (probe_root, probe_namespaces, probe_debootstrap),
}


def tier_problem(tier: str) -> str | None:
    for probe in TIER_PROBES.get(tier, ()):
        reason = probe()
        if reason:
            return reason
    return None
