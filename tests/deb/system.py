"""A clean Debian 12 for the package tests: debootstrap once into a cache, then a fresh copy per
test, entered through a mount namespace of its own (pivot_root, not chroot: the kernel refuses
a user namespace to a chrooted process, and guests need one). Commands that run guests also get
a network namespace of their own, so nothing is configured in the machine's."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

SUITE = "bookworm"
MIRROR = os.environ.get("VS_DEB_MIRROR", "http://deb.debian.org/debian")
# Kept between runs (debootstrap takes minutes, a copy seconds): VS_DEB_CACHE moves it.
CACHE = Path(os.environ.get("VS_DEB_CACHE", "/var/cache/vs-tools-tests"))
# What an administrator's minimal system has besides the base: man, completion, busybox-static
# (the source of the busybox template).
INCLUDE = "man-db,bash-completion,busybox-static"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Run inside the new mount namespace: the copy becomes the root (so /proc, /sys and /dev are
# mounted in this namespace only and vanish with it), the old root is detached.
ENTER = """set -e
root=$1; shift
mount --rbind "$root" "$root"
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
cd "$root"
pivot_root . mnt
umount -l /mnt
exec "$@"
"""


def base_system() -> Path:
    """The cached debootstrap of Debian 12 (made on first use, under a lock)."""
    base = CACHE / f"{SUITE}-minbase"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (base / "etc" / "debian_version").exists():
            partial = CACHE / f"{SUITE}-minbase.partial"
            shutil.rmtree(partial, ignore_errors=True)
            subprocess.run(
                ["debootstrap", "--variant=minbase", f"--include={INCLUDE}", SUITE,
                 str(partial), MIRROR],
                check=True, capture_output=True, text=True, timeout=1800,
            )  # fmt: skip
            partial.rename(base)
    return base


@dataclass
class System:
    """One copy of the base system, and the way in."""

    root: Path
    env: dict[str, str]

    def run(
        self,
        *argv: str,
        net: bool = True,
        check: bool = True,
        input: str | None = None,
        timeout: float = 300,
    ) -> subprocess.CompletedProcess[str]:
        """``argv`` inside the system, in a fresh network namespace unless ``net`` is False
        (apt: it downloads, and configures no network)."""
        env = [f"{k}={v}" for k, v in self.env.items()]
        command = [
            "unshare", "--mount", "--propagation", "private", *(["--net"] if net else []),
            "--", "/bin/sh", "-c", ENTER, "sh", str(self.root), "/usr/bin/env", "-i", *env, *argv,
        ]  # fmt: skip
        done = subprocess.run(
            command, input=input, capture_output=True, text=True, check=False, timeout=timeout
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
            )
        return done

    def sh(self, script: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        """A shell script inside the system."""
        return self.run("/bin/sh", "-c", script, **kwargs)  # type: ignore[arg-type]

    def path(self, inside: str) -> Path:
        """A path of the system, seen from the host."""
        return self.root / inside.lstrip("/")

    def listing(self) -> set[str]:
        """Every file, directory and link of the system, as absolute paths inside it."""
        found = set()
        for top, dirs, files in os.walk(self.root):
            rel = "/" + os.path.relpath(top, self.root)
            for name in dirs + files:
                found.add(os.path.normpath(f"{rel}/{name}"))
        return found


def _guest_pids(system: System, cgroup_parent: str) -> set[int]:
    """Processes of the system's guests and their supervisors: from the guests' cgroups and
    the supervisors' state files (all of them objects this test made)."""
    pids: set[int] = set()
    for procs in Path("/sys/fs/cgroup").glob(f"*/{cgroup_parent}/*/cgroup.procs"):
        pids |= {int(p) for p in procs.read_text().split()}
    for state in system.path("/run/vs-tools/guests").glob("*/state.json"):
        try:
            data = json.loads(state.read_text())
        except (OSError, ValueError):
            continue
        pids |= {int(data[k]) for k in ("supervisor_pid", "init_pid") if data.get(k)}
    return pids


@contextmanager
def debian_system(workdir: Path, cgroup_parent: str) -> Iterator[System]:
    """A fresh copy of the base system under ``workdir``; whatever happens, its guests are
    stopped, their processes killed by PID, their cgroups and the copy removed."""
    root = workdir / "root"
    subprocess.run(["cp", "-a", str(base_system()), str(root)], check=True)
    shutil.copy("/etc/resolv.conf", root / "etc" / "resolv.conf")
    system = System(
        root,
        {"PATH": PATH, "HOME": "/root", "LANG": "C", "VS_NO_SYSTEMD": "1",
         "DEBIAN_FRONTEND": "noninteractive", "MANWIDTH": "200", "TERM": "dumb"},
    )  # fmt: skip
    try:
        yield system
    finally:
        if system.path("/usr/sbin/vs-control").exists():
            system.run("vs-control", "--all", "--stop", "--yes", check=False, timeout=60)
        for _ in range(50):
            pids = _guest_pids(system, cgroup_parent)
            if not pids:
                break
            for pid in pids:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        groups = sorted(Path("/sys/fs/cgroup").glob(f"*/{cgroup_parent}/**/"), reverse=True)
        for group in [*groups, *Path("/sys/fs/cgroup").glob(f"*/{cgroup_parent}")]:
            with suppress(OSError):
                group.rmdir()
        shutil.rmtree(root, ignore_errors=True)
