"""Guests that really run, and the isolation catalogue (TESTING.md S1-S11, S13, H5) against a
running busybox guest: every escape must fail."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from tests.guests import Host
from vstools.runtime.sandbox import DROPPED_CAPS

pytestmark = [pytest.mark.privileged, pytest.mark.e2e]


@pytest.fixture(params=[False, True], ids=["root", "userns"])
def web(host: Host, request: pytest.FixtureRequest) -> Host:
    """A running guest: the isolation catalogue runs against a guest whose root is the host's
    uid 0 with its capabilities reduced, and against one in a user namespace (USERNS=yes)."""
    host.define("web", "198.51.100.10", userns=request.param)
    host.run("vs-control", "--name", "web", "--start")
    return host


def _init_pid(host: Host, name: str = "web") -> int:
    state = host.state(name)
    assert state is not None
    return int(str(state["init_pid"]))


def test_start_status_stop_leaves_nothing_behind(host: Host) -> None:
    host.define("web", "198.51.100.10", rss=48, proc=40, cpu="1/4")
    started = host.run("vs-control", "--name", "web", "--start")
    assert started.stdout == "vsh-test:web:disabled:running\n"
    pid = _init_pid(host)
    assert Path(f"/proc/{pid}/comm").read_text().strip() == "init"
    # The limits are the kernel's, on the guest's own cgroup.
    memory = host.cgroup_dir("memory", "web")
    assert int((memory / "memory.limit_in_bytes").read_text()) == 48 << 20
    assert (host.cgroup_dir("pids", "web") / "pids.max").read_text().strip() == "40"
    quota = int((host.cgroup_dir("cpu", "web") / "cpu.cfs_quota_us").read_text())
    assert quota == 100_000 * os.sched_getaffinity(0).__len__() // 4
    assert str(pid) in (memory / "cgroup.procs").read_text().split()
    listing = host.run("vs-control", "--all")
    assert listing.stdout == "vsh-test:web:disabled:running\n"
    stopped = host.run("vs-control", "--name", "web", "--stop")
    assert stopped.stdout == "vsh-test:web:disabled:stopped\n"
    assert not Path(f"/proc/{pid}").exists()
    assert not memory.exists()
    assert host.state("web") is None
    # The console of the guest was logged by its supervisor, shutdown included.
    console = Path(host.env["VS_RUN_DIR"]) / "guests" / "web" / "console.log"
    assert "poweroff" in console.read_text()


def test_start_twice_is_refused_and_stop_of_a_stopped_guest_too(web: Host) -> None:
    again = web.run("vs-control", "--name", "web", "--start", check=False)
    assert again.returncode == 4 and "already running" in again.stderr
    web.run("vs-control", "--name", "web", "--stop")
    stop = web.run("vs-control", "--name", "web", "--stop", check=False)
    assert stop.returncode == 4 and "not running" in stop.stderr


def test_enable_disable_persist(host: Host) -> None:
    host.define("db", "198.51.100.11")
    assert host.run("vs-control", "--name", "db", "--enable").stdout == (
        "vsh-test:db:enabled:stopped\n"
    )
    assert "ENABLED=yes" in (host.guests_dir / "db" / "guest.conf").read_text()
    assert host.run("vs-check").returncode == 0
    assert host.run("vs-control", "--name", "db", "--disable").stdout == (
        "vsh-test:db:disabled:stopped\n"
    )


def test_freeze_and_thaw(web: Host) -> None:
    web.run("vs-control", "--name", "web", "--freeze")
    state = (web.cgroup_dir("freezer", "web") / "freezer.state").read_text().strip()
    assert state == "FROZEN"
    assert "--json" and '"frozen": true' in web.run("vs-control", "--name", "web", "--json").stdout
    web.run("vs-control", "--name", "web", "--thaw")
    assert web.exec("web", "echo", "alive") == "alive\n"
    web.run("vs-control", "--name", "web", "--freeze")
    web.run("vs-control", "--name", "web", "--stop")  # a frozen guest still stops cleanly
    assert web.state("web") is None


def test_s11_host_processes_are_invisible_and_unsignalable(web: Host) -> None:
    listing = web.exec("web", "ps", "-o", "pid,comm")
    pids = [int(line.split()[0]) for line in listing.splitlines()[1:]]
    assert 1 in pids and max(pids) < 50  # the guest's own PID namespace
    assert "pytest" not in listing and "python" not in listing
    # PID 1 of the host is not the guest's: signalling "host" PIDs reaches nothing of the host.
    result = web.exec("web", "sh", "-c", f"kill -0 {os.getpid()} 2>&1; echo rc=$?", check=False)
    assert "rc=1" in result


def test_s2_no_host_mount_or_old_root_is_visible(web: Host, tmp_path: Path) -> None:
    marker = tmp_path / "host-only-marker"
    marker.write_text("host")
    mounts = web.exec("web", "cat", "/proc/self/mounts")
    targets = [line.split()[1] for line in mounts.splitlines()]
    assert targets[0] == "/"
    assert all(t == "/" or t.startswith(("/proc", "/dev", "/sys", "/tmp")) for t in targets)
    assert str(web.root) not in mounts
    assert web.exec("web", "ls", str(marker), check=False) == ""
    assert sorted(web.exec("web", "ls", "/").split()) == sorted(
        p.name for p in web.rootfs("web").iterdir()
    )


def test_s3_no_host_descriptor_reaches_guest_processes(web: Host) -> None:
    extra = os.open("/etc/hostname", os.O_RDONLY)  # inheritable descriptors of the caller
    os.set_inheritable(extra, True)
    try:
        init_fds = sorted(os.listdir(f"/proc/{_init_pid(web)}/fd"))
        listing = web.exec("web", "ls", "-l", "/proc/self/fd")
    finally:
        os.close(extra)
    assert init_fds == ["0", "1", "2"]
    fds = re.findall(r" (\d+) -> (\S+)", listing)
    assert [fd for fd, _ in fds] == ["0", "1", "2"]  # (3 is ls's own directory handle)
    assert all(target.startswith("pipe:") for _, target in fds)


def test_s4_capability_sets_of_init_and_exec(web: Host) -> None:
    dropped = sum(1 << cap for cap in DROPPED_CAPS)
    status = Path(f"/proc/{_init_pid(web)}/status").read_text()
    exec_status = web.exec("web", "cat", "/proc/self/status")
    for text in (status, exec_status):
        fields = dict(line.split(":\t") for line in text.splitlines() if line.startswith("Cap"))
        for name in ("CapEff", "CapPrm", "CapBnd"):
            assert int(fields[name], 16) & dropped == 0, (name, fields[name])
        assert int(fields["CapInh"], 16) == 0 and int(fields["CapAmb"], 16) == 0
    assert "Seccomp:\t2" in status and "Seccomp:\t2" in exec_status


def test_s5_denied_syscalls_fail(web: Host) -> None:
    lines = web.exec("web", "vstprobe", "syscalls").splitlines()
    assert len(lines) == 10
    for line in lines:
        assert line.endswith("errno=1"), line  # EPERM from the filter, whatever the call


def test_s6_s7_s8_proc_and_sys_are_protected(web: Host) -> None:
    script = (
        "echo 1 > /proc/sys/kernel/domainname; echo w1=$?;"
        "echo 1 > /proc/sys/vm/drop_caches; echo w2=$?;"
        "umount /proc/sys; echo u1=$?; umount /proc/keys; echo u2=$?;"
        "mount -o remount,rw /proc/sys; echo r1=$?; mount -o remount,rw /sys; echo r2=$?;"
        "echo x > /sys/kernel/uevent_helper; echo w3=$?;"
        "wc -c < /proc/keys; wc -c < /proc/kallsyms; wc -c < /proc/timer_list"
    )
    out = web.exec("web", "sh", "-c", script + " 2>/dev/null", check=False).split()
    results = dict(item.split("=") for item in out if "=" in item)
    assert all(value != "0" for value in results.values()), results
    assert out[-3:] == ["0", "0", "0"]  # masked: empty, whatever the host has


def test_s9_no_device_nodes(web: Host) -> None:
    os.mknod(web.rootfs("web") / "root" / "planted-mem", 0o020600, os.makedev(1, 1))
    os.mknod(web.rootfs("web") / "root" / "planted-null", 0o020666, os.makedev(1, 3))
    made = web.exec("web", "vstprobe", "mknod").splitlines()
    assert made == ["mknod-block errno=1", "mknod-char errno=1"]
    for planted in ("/root/planted-mem", "/root/planted-null"):
        # The rootfs is mounted nodev: a planted node opens nothing (EACCES).
        assert web.exec("web", "vstprobe", "open", planted) == "open errno=13\n"
    assert web.exec("web", "vstprobe", "open", "/dev/null") == "open ok\n"


def test_s10_guest_cannot_reach_cgroups_or_raise_its_limits(web: Host) -> None:
    script = (
        "mkdir -p /tmp/cg && mount -t cgroup -o memory cgroup /tmp/cg; echo m1=$?;"
        "mount -t cgroup2 none /tmp/cg; echo m2=$?;"
        "cat /proc/self/cgroup"
    )
    out = web.exec("web", "sh", "-c", script + " 2>/dev/null", check=False)
    assert "m1=0" not in out and "m2=0" not in out
    assert f"/{web.cgroup_parent}" not in out  # its own cgroup namespace hides the host's tree
    limit = web.cgroup_dir("memory", "web") / "memory.limit_in_bytes"
    assert int(limit.read_text()) == 64 << 20


def test_s1_chroot_escape_stays_inside(web: Host, tmp_path: Path) -> None:
    marker = tmp_path / "host-marker"
    marker.write_text("host")
    out = web.exec("web", "vstprobe", "chroot-escape", str(marker)).splitlines()
    assert out[0] == "chroot ok"  # the guest may chroot (SYS_CHROOT is kept)...
    assert out[-1] == "host-path errno=2"  # ...but climbing out reaches only the guest's root


def test_s13_no_keystroke_injection(web: Host) -> None:
    # With a terminal (-t): the command's terminal is a pty of the guest, and TIOCSTI is denied.
    out = web.run("vs-exec", "-t", "web", "--", "vstprobe", "tiocsti").stdout
    assert out.replace("\r", "") == "tiocsti errno=1\n"


def test_h5_a_trojan_in_the_guest_runs_only_inside_it(web: Host, tmp_path: Path) -> None:
    planted = tmp_path / "pwned"
    trojan = web.rootfs("web") / "usr" / "bin" / "ps"
    trojan.write_text(
        f"#!/bin/sh\ntouch {planted}\necho 0 > /proc/sys/kernel/printk\ncat /proc/self/status\n"
    )
    trojan.chmod(0o755)
    out = web.exec("web", "/usr/bin/ps", check=False)
    assert not planted.exists()
    caps = int(re.search(r"CapEff:\t(\w+)", out).group(1), 16)  # type: ignore[union-attr]
    assert caps & sum(1 << c for c in DROPPED_CAPS) == 0


def test_limits_bite(host: Host) -> None:
    host.define("lim", "198.51.100.12", rss=32, proc=12, cpu="1/4")
    host.run("vs-control", "--name", "lim", "--start")
    # rss: a process allocating past the limit is killed by the kernel (SIGKILL -> 137).
    alloc = host.run("vs-exec", "-T", "lim", "--", "vstprobe", "alloc", "100", check=False)
    assert alloc.returncode == 137 and "allocated" not in alloc.stdout
    failcnt = int((host.cgroup_dir("memory", "lim") / "memory.failcnt").read_text())
    assert failcnt > 0
    # proc: forking past the limit is refused.
    forked = host.exec("lim", "vstprobe", "forks", "30")
    assert int(forked.split()[1]) < 12
    # cpu 1/4 of the whole host: a busy loop gets about a quarter of all CPUs.
    usage = host.cgroup_dir("cpuacct", "lim") / "cpuacct.usage"
    before, start = int(usage.read_text()), time.monotonic()
    host.exec("lim", "vstprobe", "spin", "2")
    used = (int(usage.read_text()) - before) / 1e9 / (time.monotonic() - start)
    share = used / len(os.sched_getaffinity(0))
    assert 0.15 < share < 0.35, share


def test_exec_passes_input_and_its_end_and_refuses_a_frozen_guest(web: Host) -> None:
    echoed = web.run("vs-exec", "-T", "web", "--", "cat", input="line one\nline two\n", timeout=20)
    assert echoed.stdout == "line one\nline two\n" and echoed.returncode == 0
    counted = web.run("vs-exec", "-T", "web", "--", "wc", "-l", input="", timeout=20)
    assert counted.stdout.strip() == "0"
    web.run("vs-control", "--name", "web", "--freeze")
    frozen = web.run("vs-exec", "-T", "web", "--", "true", check=False, timeout=20)
    assert frozen.returncode == 4 and "frozen" in frozen.stderr
    web.run("vs-control", "--name", "web", "--thaw")
    unknown = web.run("vs-exec", "-T", "nosuch", "--", "true", check=False)
    assert unknown.returncode == 3


def test_userns_root_of_a_guest_is_not_root_on_the_host(host: Host) -> None:
    """USERNS=yes: the guest's root is the host's uid CONTEXT * 65536, owns its idmapped rootfs
    and nothing else: a file on disk outside the map stays unreadable to it, where the root of a
    guest without a user namespace reads it."""
    for name, ip, userns in (("web", "198.51.100.10", True), ("db", "198.51.100.11", False)):
        host.define(name, ip, context=12 if userns else 13, userns=userns)
        secret = host.rootfs(name) / "root" / "secret"
        secret.write_text("host-only\n")
        os.chown(secret, 70000, 70000)
        secret.chmod(0o600)
        host.run("vs-control", "--name", name, "--start")
    base = 12 * 65536
    status = Path(f"/proc/{_init_pid(host, 'web')}/status").read_text()
    assert f"Uid:\t{base}\t{base}\t{base}\t{base}\n" in status
    assert f"Gid:\t{base}\t{base}\t{base}\t{base}\n" in status
    assert host.exec("web", "id", "-u").strip() == "0"
    assert host.exec("web", "cat", "/proc/self/uid_map").split() == ["0", str(base), "65536"]
    # The rootfs is idmapped: root's files on disk are the guest root's, and what it makes is
    # owned by 0 on disk (nothing was chowned, and USERNS can be switched off again).
    host.exec("web", "sh", "-c", "echo extra >> /etc/hosts && touch /root/made")
    assert (host.rootfs("web") / "root" / "made").stat().st_uid == 0
    assert "extra" in (host.rootfs("web") / "etc" / "hosts").read_text()
    assert host.exec("web", "stat", "-c", "%u:%g", "/tmp", "/dev/null").split() == ["0:0", "0:0"]
    # Outside the map the guest's root is nobody: no capability reaches the host's files.
    denied = host.run("vs-exec", "-T", "web", "--", "cat", "/root/secret", check=False)
    assert denied.returncode == 1 and "Permission denied" in denied.stderr
    assert host.exec("db", "cat", "/root/secret") == "host-only\n"
    # Its namespaces belong to the host's user namespace: root in the guest cannot rename it.
    renamed = host.run("vs-exec", "-T", "web", "--", "hostname", "other", check=False)
    assert renamed.returncode != 0 and host.exec("web", "hostname").strip() == "web"
    for name in ("web", "db"):
        host.run("vs-control", "--name", name, "--stop")


def test_userns_needs_a_context_with_room_for_its_map(host: Host) -> None:
    host.define("big", "198.51.100.10", context=70000, userns=True)
    checked = host.run("vs-check", check=False)
    conf = host.guests_dir / "big" / "guest.conf"
    line = conf.read_text().splitlines().index("USERNS=yes") + 1
    assert checked.returncode == 1
    assert f"{conf}:{line}:1: USERNS=yes needs a context number up to 32767" in checked.stderr
    started = host.run("vs-control", "--name", "big", "--start", check=False)
    assert started.returncode != 0 and "32767" in started.stderr
    assert host.state("big") is None and not host.cgroup_dir("memory", "big").exists()
