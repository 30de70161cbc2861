"""vs-limit and vs-stats against running guests, and the acceptance run of issue 3: 20 guests
started, listed, limited and stopped with --all, leaving no process, mount or cgroup behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.guests import Host

pytestmark = [pytest.mark.privileged, pytest.mark.e2e]


def test_limits_show_change_hot_and_persist(host: Host) -> None:
    host.define("web", "198.51.100.10", rss=64, tmpfs=8, proc=50, cpu="1/4")
    host.run("vs-control", "--name", "web", "--start")
    shown = host.run("vs-limit", "--name", "web").stdout.strip().split(":")
    assert shown[:2] == ["vsh-test", "web"]
    assert [field.split("/", 1)[1] for field in shown[2:]] == ["64", "256", "8", "50", "1/4"]
    host.run(
        "vs-limit", "--name", "web", "--rss", "48", "--tmpfs", "4", "--proc", "20", "--cpu", "1/8"
    )
    memory = host.cgroup_dir("memory", "web")
    assert int((memory / "memory.limit_in_bytes").read_text()) == 48 << 20
    assert (host.cgroup_dir("pids", "web") / "pids.max").read_text().strip() == "20"
    quota = int((host.cgroup_dir("cpu", "web") / "cpu.cfs_quota_us").read_text())
    assert quota == 100_000 * len(os.sched_getaffinity(0)) // 8
    assert host.exec("web", "df", "-m", "/tmp").split()[-5] == "4"  # /tmp remounted, hot
    conf = (host.guests_dir / "web" / "guest.conf").read_text()
    for line in ("RSS_LIMIT=48", "TMPFS_LIMIT=4", "PROC_LIMIT=20", "CPU_LIMIT=1/8"):
        assert line in conf
    assert host.run("vs-check").returncode == 0
    # After a restart the persisted limits are the ones in force.
    host.run("vs-control", "--name", "web", "--restart")
    assert int((memory / "memory.limit_in_bytes").read_text()) == 48 << 20


def test_a_refused_change_rolls_back_every_step(host: Host) -> None:
    host.define("web", "198.51.100.10", rss=64, proc=50)
    host.run("vs-control", "--name", "web", "--start")
    before = (host.guests_dir / "web" / "guest.conf").read_text()
    # /tmp cannot shrink below what is stored in it: the last hot step fails.
    host.exec("web", "dd", "if=/dev/zero", "of=/tmp/fill", "bs=1M", "count=6")
    result = host.run("vs-limit", "--name", "web", "--proc", "30", "--tmpfs", "2", check=False)
    assert result.returncode == 5
    assert "rolled back: set web process limit to 30" in result.stderr
    assert (host.cgroup_dir("pids", "web") / "pids.max").read_text().strip() == "50"
    assert (host.guests_dir / "web" / "guest.conf").read_text() == before


def test_dry_run_changes_nothing(host: Host) -> None:
    host.define("web", "198.51.100.10", rss=64)
    host.run("vs-control", "--name", "web", "--start")
    result = host.run("vs-limit", "--name", "web", "--rss", "100", "--dry-run")
    assert "would: set web memory limit to 100 MB" in result.stderr
    memory = host.cgroup_dir("memory", "web")
    assert int((memory / "memory.limit_in_bytes").read_text()) == 64 << 20
    assert "RSS_LIMIT=64" in (host.guests_dir / "web" / "guest.conf").read_text()


def test_stats_of_host_and_guest(host: Host) -> None:
    host.define("web", "198.51.100.10")
    host.define("db", "198.51.100.11")
    host.run("vs-control", "--name", "web", "--start")
    lines = dict(line.split(":", 1) for line in host.run("vs-stats").stdout.splitlines())
    assert lines["host"] == "vsh-test"
    assert (lines["guests_defined"], lines["guests_running"]) == ("2", "1")
    stats = json.loads(host.run("vs-stats", "--name", "web", "--json").stdout)
    assert stats["state"] == "running" and stats["processes"] >= 1
    assert stats["rss_limit_mb"] == 64 and 0 < stats["rss_used_mb"] < 64
    assert stats["ip"] == "198.51.100.10" and stats["disk_used_mb"] > 1
    stopped = dict(
        line.split(":", 1) for line in host.run("vs-stats", "--name", "db").stdout.splitlines()
    )
    assert stopped["state"] == "stopped" and stopped["processes"] == "0"


def test_twenty_guests_with_all(host: Host) -> None:
    names = [f"g{index:02d}" for index in range(20)]
    for index, name in enumerate(names):
        host.define(name, f"198.51.100.{20 + index}", rss=32, proc=20)
    started = host.run("vs-control", "--all", "--start", timeout=300)
    assert started.stdout.splitlines() == [f"vsh-test:{n}:disabled:running" for n in names]
    pids = [int(str(host.state(n)["init_pid"])) for n in names]  # type: ignore[index]
    limited = host.run("vs-limit", "--all", "--rss", "24").stdout.splitlines()
    assert len(limited) == 20 and all(line.split(":")[2].endswith("/24") for line in limited)
    for name in names:
        limit = host.cgroup_dir("memory", name) / "memory.limit_in_bytes"
        assert int(limit.read_text()) == 24 << 20
    stopped = host.run("vs-control", "--all", "--stop", timeout=300)
    assert stopped.stdout.splitlines() == [f"vsh-test:{n}:disabled:stopped" for n in names]
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
    for controller in ("memory", "pids", "cpu", "freezer"):
        assert list(host.cgroup_dir(controller).iterdir()) == [] or not any(
            p.is_dir() for p in host.cgroup_dir(controller).iterdir()
        )
    with open("/proc/self/mounts") as mounts:
        assert str(host.root) not in mounts.read()
