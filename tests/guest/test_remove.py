"""vs-remove on this host: a stopped guest removed completely (root, configuration, run state),
a running one refused unless --force stops it, a removal killed halfway finished by the next."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.guests import Host

pytestmark = [pytest.mark.privileged, pytest.mark.e2e]


def test_remove_takes_everything_of_a_stopped_guest(host: Host) -> None:
    host.define("web", "198.51.100.10")
    host.define("db", "198.51.100.11")
    host.run("vs-control", "--name", "web", "--start")
    host.run("vs-control", "--name", "web", "--stop")
    monitor = Path(host.env["VS_STATE_DIR"]) / "monitor" / "guests"
    monitor.mkdir(parents=True, exist_ok=True)
    for file in ("web.json", ".web.json.swap", "db.json"):  # as vs-monitor leaves them
        (monitor / file).write_text("{}")
    dry = host.run("vs-remove", "--name", "web", "--dry-run")
    assert "would: remove the root filesystem" in dry.stderr
    assert host.rootfs("web").is_dir()
    removed = host.run("vs-remove", "--name", "web")
    assert "web removed" in removed.stderr
    assert not host.rootfs("web").exists() and not (host.guests_dir / "web").exists()
    assert sorted(p.name for p in monitor.iterdir()) == ["db.json"]
    assert host.run("vs-control", "--all").stdout == "vsh-test:db:disabled:stopped\n"
    again = host.run("vs-remove", "--name", "web", check=False)
    assert again.returncode == 3 and "no guest named web" in again.stderr


def test_a_running_guest_is_refused_unless_forced(host: Host) -> None:
    host.define("web", "198.51.100.10")
    host.run("vs-control", "--name", "web", "--start")
    refused = host.run("vs-remove", "--name", "web", check=False)
    assert refused.returncode == 4 and "is running" in refused.stderr
    assert host.state("web") is not None
    host.run("vs-remove", "--name", "web", "--force")
    assert host.state("web") is None and not host.cgroup_dir("memory", "web").exists()
    assert not host.rootfs("web").exists()


def test_a_removal_killed_halfway_is_finished_by_the_next(host: Host) -> None:
    host.define("web", "198.51.100.10")
    # As a vs-remove killed after its first steps leaves it: marked, root half gone.
    (host.guests_dir / "web" / ".vs-remove-begun").write_text("being removed by vs-remove\n")
    for entry in ("bin", "etc"):
        for path in sorted((host.rootfs("web") / entry).rglob("*"), reverse=True):
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            else:
                path.unlink()
    assert host.run("vs-control", "--all").stdout == ""  # gone from every listing at once
    checked = host.run("vs-check", check=False)
    assert "a vs-remove of web was interrupted" in checked.stderr
    host.run("vs-remove", "--name", "web")
    assert not host.rootfs("web").exists() and not (host.guests_dir / "web").exists()
