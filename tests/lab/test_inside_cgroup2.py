"""Guest limits on a real cgroup v2 host. These tests run inside the lab VM only: there
/sys/fs/cgroup is a cgroup2 mount offering memory, pids and cpu (TESTING.md: this machine is v1).
tests/lab/test_lab.py boots the VM and runs this file there (VS_LAB_INSIDE=1); on the host the
module is skipped, as its outer test covers it.

The guests are the real thing (``host`` fixture: busybox guests started with vs-control); only
the file names differ from tests/guest/test_limits.py: memory.max, pids.max, cpu.max,
memory.events, pids.events, cpu.stat, cgroup.freeze, cgroup.kill."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.guests import BIN, Host
from vstools.host.cgroup import Cgroup
from vstools.host.cgrouplayout import CgroupVersion, probe_layout

if not os.environ.get("VS_LAB_INSIDE"):
    pytest.skip("runs inside the lab VM (tests/lab/test_lab.py boots it)", allow_module_level=True)

pytestmark = [pytest.mark.privileged, pytest.mark.e2e]

CGROUP2 = Path("/sys/fs/cgroup")


def _keyed(path: Path) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in path.read_text().splitlines())}


def _init_pid(host: Host, name: str) -> int:
    state = host.state(name)
    assert state is not None
    return int(str(state["init_pid"]))


def test_the_host_is_cgroup_v2_with_controllers() -> None:
    """What the outer test checks to know the guests below ran on v2 (written to the report)."""
    layout = probe_layout()
    controllers = (CGROUP2 / "cgroup.controllers").read_text().split()
    subtree = (CGROUP2 / "cgroup.subtree_control").read_text().split()
    report = {
        "version": str(layout.version),
        "root": str(layout.cgroup2_root),
        "controllers": controllers,
        "subtree_control": subtree,
        "kernel": os.uname().release,
        "cpus": len(os.sched_getaffinity(0)),
    }
    Path(os.environ.get("VS_LAB_REPORT", "/dev/null")).write_text(json.dumps(report))
    assert layout.version is CgroupVersion.V2 and layout.cgroup2_root == CGROUP2
    assert {"memory", "pids", "cpu"} <= set(subtree)
    assert not Path("/sys/fs/cgroup/memory").exists()  # no v1 hierarchy anywhere


def test_start_limits_stats_stop(host: Host) -> None:
    host.define("web", "198.51.100.10", rss=48, proc=40, cpu="1/4")
    host.run("vs-control", "--name", "web", "--start")
    group = host.cgroup_dir("", "web")  # v2: one tree, /sys/fs/cgroup/<parent>/web
    assert int((group / "memory.max").read_text()) == 48 << 20
    assert (group / "pids.max").read_text().strip() == "40"
    cpus = len(os.sched_getaffinity(0))
    assert (group / "cpu.max").read_text().split() == [str(100_000 * cpus // 4), "100000"]
    # The parent got the controllers for its children from vstools (the root had them already).
    parent = host.cgroup_dir("")
    assert {"memory", "pids", "cpu"} <= set((parent / "cgroup.subtree_control").read_text().split())
    init = _init_pid(host, "web")
    assert str(init) in (group / "cgroup.procs").read_text().split()
    assert Path(f"/proc/{init}/cgroup").read_text() == f"0::/{host.cgroup_parent}/web\n"
    # vs-exec joins the same group.
    assert host.exec("web", "cat", "/proc/self/cgroup").strip() == "0::/"  # cgroup namespace
    stats = json.loads(host.run("vs-stats", "--name", "web", "--json").stdout)
    assert stats["state"] == "running" and stats["processes"] >= 1
    assert stats["rss_limit_mb"] == 48 and 0 < stats["rss_used_mb"] < 48
    host.run("vs-control", "--name", "web", "--stop")
    assert not group.exists()
    assert not Path(f"/proc/{init}").exists()


def test_limits_bite(host: Host) -> None:
    host.define("lim", "198.51.100.12", rss=32, proc=12, cpu="1/4")
    host.run("vs-control", "--name", "lim", "--start")
    group = host.cgroup_dir("", "lim")
    # rss: on v2 memory.max makes the kernel OOM-kill the allocating process (SIGKILL -> 137).
    alloc = host.run("vs-exec", "-T", "lim", "--", "vstprobe", "alloc", "100", check=False)
    assert alloc.returncode == 137 and "allocated" not in alloc.stdout
    events = _keyed(group / "memory.events")
    assert events["oom_kill"] >= 1 and events["max"] >= 1, events
    limits = host.run("vs-stats", "--name", "lim", "--json").stdout
    assert json.loads(limits)["rss_limit_mb"] == 32
    # proc: forking past pids.max is refused, and pids.events counts it.
    forked = host.exec("lim", "vstprobe", "forks", "30")
    assert int(forked.split()[1]) < 12
    assert _keyed(group / "pids.events")["max"] >= 1
    # cpu 1/4 of the whole host: a busy loop gets about a quarter of all CPUs (cpu.stat),
    # measured while it spins: starting vs-exec costs seconds under TCG and must not count.
    spinner = subprocess.Popen(
        [str(BIN / "vs-exec"), "-T", "lim", "--", "sh", "-c", "echo go; exec vstprobe spin 5"],
        env=host.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert spinner.stdout is not None and spinner.stdout.readline() == "go\n"
        before, start = _keyed(group / "cpu.stat")["usage_usec"], time.monotonic()
        time.sleep(2.5)
        used = (_keyed(group / "cpu.stat")["usage_usec"] - before) / 1e6
        share = used / (time.monotonic() - start) / len(os.sched_getaffinity(0))
    finally:
        assert spinner.wait(timeout=30) == 0
    assert 0.15 < share < 0.35, share
    assert _keyed(group / "cpu.stat")["nr_throttled"] >= 1


def test_hot_change_with_vs_limit_and_rollback(host: Host) -> None:
    host.define("web", "198.51.100.10", rss=64, tmpfs=8, proc=50, cpu="1/4")
    host.run("vs-control", "--name", "web", "--start")
    group = host.cgroup_dir("", "web")
    host.run("vs-limit", "--name", "web", "--rss", "40", "--proc", "20", "--cpu", "1/8")
    assert int((group / "memory.max").read_text()) == 40 << 20
    assert (group / "pids.max").read_text().strip() == "20"
    cpus = len(os.sched_getaffinity(0))
    assert (group / "cpu.max").read_text().split() == [str(100_000 * cpus // 8), "100000"]
    shown = host.run("vs-limit", "--name", "web").stdout.strip().split(":")
    assert [field.split("/", 1)[1] for field in shown[2:]] == ["40", "256", "8", "20", "1/8"]
    # A refused step (/tmp cannot shrink below its content) rolls the v2 writes back.
    host.exec("web", "dd", "if=/dev/zero", "of=/tmp/fill", "bs=1M", "count=6")
    result = host.run("vs-limit", "--name", "web", "--proc", "30", "--tmpfs", "2", check=False)
    assert result.returncode == 5, result.stderr
    assert (group / "pids.max").read_text().strip() == "20"
    # Restarted, the persisted limits are the ones in force.
    host.run("vs-control", "--name", "web", "--restart")
    assert int((group / "memory.max").read_text()) == 40 << 20


def test_freeze_and_thaw(host: Host) -> None:
    host.define("web", "198.51.100.10")
    host.run("vs-control", "--name", "web", "--start")
    group = host.cgroup_dir("", "web")
    host.run("vs-control", "--name", "web", "--freeze")
    assert _keyed(group / "cgroup.events")["frozen"] == 1
    assert (group / "cgroup.freeze").read_text().strip() == "1"
    refused = host.run("vs-exec", "-T", "web", "--", "true", check=False)
    assert refused.returncode != 0 and "frozen" in refused.stderr
    host.run("vs-control", "--name", "web", "--thaw")
    assert _keyed(group / "cgroup.events")["frozen"] == 0
    assert host.exec("web", "echo", "alive").strip() == "alive"
    # A frozen guest still stops (the supervisor thaws it for its shutdown signal).
    host.run("vs-control", "--name", "web", "--freeze")
    host.run("vs-control", "--name", "web", "--stop")
    assert not group.exists()


def test_kill_reaches_every_process_and_its_forks(run_prefix: str) -> None:
    cgroup = Cgroup(probe_layout(), f"{run_prefix}-kill/group")
    cgroup.create()
    try:
        cgroup.set_pids_limit(50)
        # A shell that keeps forking: cgroup.kill must also reach children forked during it.
        spawner = subprocess.Popen(
            ["/bin/sh", "-c", "while :; do sleep 30 & done"],
            preexec_fn=lambda: cgroup.add_pid(os.getpid()),  # noqa: PLW1509 - no threads here
        )
        deadline = time.monotonic() + 10
        while cgroup.pids_current() < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cgroup.pids_current() >= 10
        cgroup.freeze()
        assert cgroup.is_frozen()
        cgroup.kill()  # SIGKILL reaches frozen tasks on v2
        assert cgroup.pids() == [] and spawner.wait(timeout=5) == -9
        cgroup.destroy()
        assert not cgroup.exists()
    finally:
        if cgroup.exists():
            (cgroup.directories()[0] / "cgroup.kill").write_text("1")
            time.sleep(0.5)
            cgroup.destroy()
        with contextlib.suppress(FileNotFoundError):
            (CGROUP2 / f"{run_prefix}-kill").rmdir()


def test_lowering_memory_below_what_cannot_be_reclaimed_is_refused(host: Host) -> None:
    """v1 answers EBUSY when it cannot reclaim down to a lowered limit; a v2 memory.max write
    OOM-kills the group's processes instead. Files on the guest's /tmp are charged to it and
    cannot be reclaimed without swap: the change must be refused and the guest keep running."""
    host.define("web", "198.51.100.10", rss=64, tmpfs=32)
    host.run("vs-control", "--name", "web", "--start")
    group = host.cgroup_dir("", "web")
    init = _init_pid(host, "web")
    host.exec("web", "dd", "if=/dev/zero", "of=/tmp/fill", "bs=1M", "count=12")
    result = host.run("vs-limit", "--name", "web", "--rss", "8", check=False)
    assert result.returncode == 5, result.stdout + result.stderr
    assert "memory" in result.stderr
    assert int((group / "memory.max").read_text()) == 64 << 20
    assert _keyed(group / "memory.events")["oom_kill"] == 0
    assert Path(f"/proc/{init}").exists()
    assert host.exec("web", "echo", "alive").strip() == "alive"
    assert "RSS_LIMIT=64" in (host.guests_dir / "web" / "guest.conf").read_text()


@pytest.fixture
def ext4_root(host: Host, tmp_path: Path, run_prefix: str) -> Iterator[Host]:
    """The test host's root filesystems on ext4 (a loop device): the VM's /tmp is a tmpfs,
    which Debian 12's kernel (6.1) cannot mount idmapped, as USERNS=yes guests need. Set up
    after the host, so torn down before it goes: the guests are stopped first."""
    image = tmp_path / f"{run_prefix}-ext4.img"
    mountpoint = tmp_path / f"{run_prefix}-ext4"
    with open(image, "wb") as handle:
        handle.truncate(256 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    mountpoint.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], check=True)
    previous = host.env["VS_ROOT_DIR"]
    host.env["VS_ROOT_DIR"] = str(mountpoint / "vservers")
    try:
        yield host
    finally:
        for name in host.guests:
            host.run("vs-control", "--name", name, "--stop", check=False)
        host.env["VS_ROOT_DIR"] = previous
        subprocess.run(["umount", "-d", str(mountpoint)], check=False)


def test_guest_hardening_on_debians_own_kernel(ext4_root: Host, attack_binary: Path) -> None:
    """On Debian's kernel (no real-time group scheduling, cgroup v2, a root with every
    capability): a guest in either mode cannot take SCHED_FIFO (there it would escape its CPU
    quota) though the host's root can; the supervisor is kept from the OOM killer and its guest
    is not; a nested user namespace reaches no cgroup (A2 on v2)."""
    subprocess.run(["chrt", "-f", "1", "true"], check=True)  # the host's root may: the kernel
    host = ext4_root
    host.attack = attack_binary
    for name, ip, userns in (
        ("rootmode", "198.51.100.10", False),
        ("unpriv", "198.51.100.11", True),
    ):
        host.define(name, ip, userns=userns)
        host.run("vs-control", "--name", name, "--start")
        rt = dict(line.split(" ", 1) for line in host.exec(name, "vstattack", "rt").splitlines())
        assert rt == {"sched-fifo": "errno=1", "sched-rr": "errno=1"}, (name, rt)
        state = host.state(name)
        assert state is not None
        supervisor, init = state["supervisor_pid"], state["init_pid"]
        assert Path(f"/proc/{supervisor}/oom_score_adj").read_text().strip() == "-1000"
        assert Path(f"/proc/{init}/oom_score_adj").read_text().strip() == "0"
        limit = (CGROUP2 / host.cgroup_parent / name / "memory.max").read_text()
        out = host.exec(name, "vstattack", "cgescape")
        results = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
        if not userns:
            assert results["unshare-newuser"] == "errno=1", out
            assert results["clone3-newuser"] == "errno=38", out
        mounted = [k[6:] for k, v in results.items() if k.startswith("mount-") and v == "ok"]
        assert userns or not mounted, out
        for hierarchy in mounted:
            assert results[f"subdirs-{hierarchy}"] == "0" and results[f"mkdir-{hierarchy}"] != "ok"
        assert not [k for k, v in results.items() if k.startswith("write-") and v == "ok"], out
        assert (CGROUP2 / host.cgroup_parent / name / "memory.max").read_text() == limit
        host.run("vs-control", "--name", name, "--stop")
