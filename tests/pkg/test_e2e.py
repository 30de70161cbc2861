"""vs-pkg on a real Debian guest whose firewall.conf is ``enable`` and nothing else: packages
come through the per-run proxy and one temporary firewall element, and the ruleset is the same
before and after, whatever happens to the run (catalogue H6); the guest's own package tools run
only with the guest's privileges (H5)."""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.guests import Host, netns_prefix
from tests.pkg.conftest import GUEST, MIRROR_IP, MIRROR_NAME, PkgEnv, write_sources

pytestmark = [pytest.mark.e2e]

# A package whose maintainer script holds the run open until the test says go (bounded: a
# failing test never leaves it waiting for more than a minute).
HOLD = (
    "touch /var/tmp/vst-inside; i=0\n"
    'while [ ! -e /var/tmp/vst-go ] && [ "$i" -lt 600 ]; do sleep 0.1; i=$((i+1)); done'
)


def _wait_for(path: Path, process: subprocess.Popen[str], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"vs-pkg ended early ({process.returncode}):\n{out}{err}")
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@contextlib.contextmanager
def held_run(env: PkgEnv, *extra: str) -> Iterator[subprocess.Popen[str]]:
    """vs-pkg installing the holding package, stopped inside its postinst for the block."""
    env.mirror.publish("vstslow", "1.0", postinst=HOLD)
    process = subprocess.Popen(
        env.pkg_argv("--name", GUEST, "--update_sources", "--install", "vstslow", *extra),
        env=env.host.env,
        text=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    rootfs = env.rootfs()
    try:
        _wait_for(rootfs / "var" / "tmp" / "vst-inside", process)
        yield process
    finally:
        (rootfs / "var" / "tmp" / "vst-go").write_text("")
        if process.poll() is None:
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()  # by the PID this test started
                process.wait()
        if process.stdout:
            process.stdout.close()
        if process.stderr:
            process.stderr.close()


def _session(env: PkgEnv) -> dict[str, object]:
    path = Path(env.host.env["VS_RUN_DIR"]) / "pkg" / GUEST / "session.json"
    data: dict[str, object] = json.loads(path.read_text())
    return data


def _tcp(env: PkgEnv, ip: str, port: int) -> bool:
    """Whether the guest can open a TCP connection to ip:port (bash's /dev/tcp, 3 s at most)."""
    out = env.host.exec(
        GUEST,
        "timeout",
        "3",
        "bash",
        "-c",
        f"exec 3<>/dev/tcp/{ip}/{port} && echo open",
        check=False,
    )
    return out.strip() == "open"


def _without_expiry(ruleset: str) -> str:
    return re.sub(r" expires \S+", "", ruleset)


def _added_lines(before: str, after: str) -> tuple[list[str], list[str]]:
    diff = list(difflib.ndiff(before.splitlines(), after.splitlines()))
    return [d[2:] for d in diff if d.startswith("+ ")], [d[2:] for d in diff if d.startswith("- ")]


def test_install_through_the_proxy_with_dns_denied(pkg_env: PkgEnv) -> None:
    before = pkg_env.ruleset()
    # The guest resolves nothing: its firewall denies DNS like everything else.
    assert pkg_env.host.exec(GUEST, "getent", "hosts", MIRROR_NAME, check=False) == ""
    result = pkg_env.pkg("--name", GUEST, "--update_sources", "--install", "vsthello")
    assert pkg_env.installed("vsthello") == "1.0", result.stderr
    assert "Setting up vsthello (1.0)" in result.stdout
    assert f"{GUEST}: install done" in result.stderr
    assert pkg_env.ruleset() == before
    # Nothing of the run is left: no record, no proxy address, the guest's routes intact.
    assert not (Path(pkg_env.host.env["VS_RUN_DIR"]) / "pkg" / GUEST).exists()
    addresses = subprocess.run(
        ["ip", "-n", pkg_env.host.netns, "-4", "addr"], capture_output=True, text=True, check=True
    ).stdout
    assert "169.254.80.1" not in addresses
    routes = subprocess.run(
        ["ip", "-n", pkg_env.host.netns, "route", "get", "198.51.100.30"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "dev vs10000" in routes
    # A second run works as the first did (the routes survived the first's cleanup).
    pkg_env.pkg("--name", GUEST, "--update_sources", "--install", "vstother")
    assert pkg_env.installed("vstother") == "2.0"


def test_during_the_run_one_element_and_nothing_else_is_open(pkg_env: PkgEnv) -> None:
    before = pkg_env.ruleset()
    assert not _tcp(pkg_env, MIRROR_IP, 80)  # closed before the run
    with held_run(pkg_env) as process:
        during = pkg_env.ruleset()
        added, removed = _added_lines(before, during)
        port = int(str(_session(pkg_env)["port"]))
        assert removed == []
        assert len(added) == 1, added
        assert f"198.51.100.30 . 169.254.80.1 . {port} timeout" in added[0]
        assert "expires" in added[0]  # it goes away by itself
        # The guest reaches its proxy, and nothing else: not the mirror itself, not another
        # port of the proxy's address, not the gateway or another peer.
        assert _tcp(pkg_env, "169.254.80.1", port)
        assert not _tcp(pkg_env, MIRROR_IP, 80)
        assert not _tcp(pkg_env, MIRROR_IP, 443)
        assert not _tcp(pkg_env, "169.254.80.1", 22)
        assert not _tcp(pkg_env, "198.51.100.1", 80)
        # The proxy admits the mirror's name only.
        script = (
            f"exec 3<>/dev/tcp/169.254.80.1/{port};"
            ' printf "GET http://{host}/ HTTP/1.0\\r\\nHost: {host}\\r\\n\\r\\n" >&3; head -1 <&3'
        )
        for host, allowed in ((MIRROR_NAME, True), ("evil.example.org", False), (MIRROR_IP, False)):
            status = pkg_env.host.exec(
                GUEST, "timeout", "5", "bash", "-c", script.replace("{host}", host), check=False
            )
            assert (" 200 " in status) is allowed, (host, status)
        connect = (
            f"exec 3<>/dev/tcp/169.254.80.1/{port};"
            ' printf "CONNECT evil.example.org:443 HTTP/1.0\\r\\n\\r\\n" >&3; head -1 <&3'
        )
        refused = pkg_env.host.exec(GUEST, "timeout", "5", "bash", "-c", connect, check=False)
        assert " 200 " not in refused and refused.strip(), refused
        # No host process is visible in the guest: the proxy and vs-pkg live outside its PID
        # namespace (catalogue A1).
        names = pkg_env.host.exec(GUEST, "sh", "-c", "cat /proc/[0-9]*/comm")
        assert "tinyproxy" not in names and "vs-pkg" not in names
    assert process.returncode == 0
    assert pkg_env.ruleset() == before
    assert pkg_env.installed("vstslow") == "1.0"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_restores_the_ruleset(pkg_env: PkgEnv, signum: int) -> None:
    before = pkg_env.ruleset()
    with held_run(pkg_env) as process:
        proxy_pid = int(str(_session(pkg_env)["proxy_pid"]))
        during = pkg_env.ruleset()
        assert during != before
        # A second run for the same guest meanwhile is refused and takes nothing away.
        second = pkg_env.pkg("--name", GUEST, "--update_sources", check=False)
        assert second.returncode == 4 and "locked" in second.stderr, second.stderr
        # (the element's remaining time aside, which runs down)
        assert _without_expiry(pkg_env.ruleset()) == _without_expiry(during)
        assert Path(f"/proc/{proxy_pid}").exists()
        process.send_signal(signum)
        process.wait(timeout=60)
        assert process.returncode == 130
        assert pkg_env.ruleset() == before
        assert not Path(f"/proc/{proxy_pid}").exists()


@pytest.mark.parametrize("cleaner", ["vs-pkg", "vs-net", "vs-net --name"])
def test_kill_9_leaves_an_expiring_element_that_the_next_run_removes(
    pkg_env: PkgEnv, cleaner: str
) -> None:
    before = pkg_env.ruleset()
    with held_run(pkg_env) as process:
        proxy_pid = int(str(_session(pkg_env)["proxy_pid"]))
        process.kill()
        process.wait()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{proxy_pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # the proxy dies with vs-pkg (PR_SET_PDEATHSIG)
        assert not Path(f"/proc/{proxy_pid}").exists()
        added, _ = _added_lines(before, pkg_env.ruleset())
        assert len(added) == 1 and "expires" in added[0]  # left, but on its way out
    if cleaner == "vs-pkg":
        result = pkg_env.pkg("--name", GUEST, "--update_sources")
        assert "leftover of an earlier run removed" in result.stderr
    elif cleaner == "vs-net":  # a full reload refills every set: the element is gone with it
        pkg_env.host.run("vs-net", "--all", "--fw", "up")
    else:  # one guest's update: the dead run's record names its element
        result = pkg_env.host.run("vs-net", "--name", GUEST, "--fw", "up")
        assert "leftover of a killed vs-pkg removed: firewall element" in result.stderr
    assert pkg_env.ruleset() == before
    assert not (Path(pkg_env.host.env["VS_RUN_DIR"]) / "pkg" / GUEST).exists()


def test_a_failing_run_restores_the_ruleset_and_exits_5(pkg_env: PkgEnv) -> None:
    before = pkg_env.ruleset()
    result = pkg_env.pkg("--name", GUEST, "--update_sources", "--install", "vstnosuch", check=False)
    assert result.returncode == 5, result.stderr
    assert "vstnosuch" in result.stderr and "failed" in result.stderr
    assert pkg_env.ruleset() == before


def test_list_upgrade_remove_search_show_and_json(pkg_env: PkgEnv) -> None:
    pkg_env.pkg("--name", GUEST, "--update_sources", "--install", "vsthello", "vstdep")
    pkg_env.mirror.publish("vsthello", "1.1")
    listed = pkg_env.pkg("--name", GUEST, "--update_sources", "--list_upgrades")
    assert f"{GUEST}:vsthello:1.0:1.1" in listed.stdout.splitlines()
    as_json = json.loads(pkg_env.pkg("--name", GUEST, "--list_upgrades", "--json").stdout)
    packages = as_json[0]["steps"][0]["packages"]
    assert {"name": "vsthello", "version": "1.0", "candidate": "1.1", "summary": ""} in packages
    before = pkg_env.ruleset()
    pkg_env.pkg("--name", GUEST, "--upgrade_all")
    assert pkg_env.installed("vsthello") == "1.1"
    assert pkg_env.ruleset() == before
    pkg_env.pkg("--name", GUEST, "--remove", "vstdep")
    assert pkg_env.installed("vstdep") == ""
    found = pkg_env.pkg("--name", GUEST, "--search", "vsth").stdout.splitlines()
    assert any(line.startswith(f"{GUEST}:vsthello:") for line in found), found
    shown = pkg_env.pkg("--name", GUEST, "--show", "vstother").stdout
    assert f"{GUEST}:Package: vstother" in shown.splitlines()
    installed = pkg_env.pkg("--name", GUEST).stdout.splitlines()
    assert f"{GUEST}:vsthello:1.1" in installed
    assert f"{GUEST}:vstdep:1.0" not in installed


def test_the_slides_one_liner_runs_in_order(pkg_env: PkgEnv) -> None:
    pkg_env.pkg("--name", GUEST, "--update_sources", "--install", "vsthello")
    pkg_env.mirror.publish("vsthello", "1.2")
    out = pkg_env.pkg(
        "--name",
        GUEST,
        "--install",
        "vstother",
        "--upgrade_all",
        "--list_upgrades",
        "--update_sources",
        "--json",
    ).stdout
    steps = json.loads(out)[0]["steps"]
    assert [s["action"] for s in steps] == [
        "update_sources",
        "list_upgrades",
        "upgrade_all",
        "install",
    ]
    assert steps[1]["packages"][0]["candidate"] == "1.2"
    assert pkg_env.installed("vsthello") == "1.2"
    assert pkg_env.installed("vstother") == "2.0"


def test_https_mirror_through_connect(pkg_env: PkgEnv) -> None:
    write_sources(
        pkg_env.rootfs(), f"deb [trusted=yes] https://{MIRROR_NAME}/ vst main", pkg_env.mirror.ca
    )
    before = pkg_env.ruleset()
    result = pkg_env.pkg("--name", GUEST, "--update_sources", "--install", "vsthello")
    assert f"https://{MIRROR_NAME}" in result.stdout
    assert pkg_env.installed("vsthello") == "1.0"
    assert pkg_env.ruleset() == before


def test_a_trojan_dpkg_runs_with_the_guests_privileges_only(pkg_env: PkgEnv) -> None:
    """H5: the guest's dpkg replaced by a script that reports who it is, then does the job."""
    rootfs = pkg_env.rootfs()
    dpkg = rootfs / "usr" / "bin" / "dpkg"
    os.rename(dpkg, rootfs / "usr" / "bin" / "dpkg.real")
    dpkg.write_text(
        "#!/bin/sh\n"
        "{ readlink /proc/self/ns/pid /proc/self/ns/mnt /proc/self/ns/net /proc/self/ns/cgroup;"
        " grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status;"
        " ls /proc | grep -c '^[0-9]'; } > /var/tmp/vst-trojan.$$ 2>&1\n"
        'exec /usr/bin/dpkg.real "$@"\n'
    )
    dpkg.chmod(0o755)
    pkg_env.pkg("--name", GUEST, "--update_sources", "--install", "vsthello")
    assert pkg_env.installed("vsthello") == "1.0"
    reports = list((rootfs / "var" / "tmp").glob("vst-trojan.*"))
    assert reports, "the trojan dpkg never ran"
    state = pkg_env.host.state(GUEST)
    assert state is not None
    init = int(str(state["init_pid"]))
    namespaces = ("pid", "mnt", "net", "cgroup")
    guest_ns = [os.readlink(f"/proc/{init}/ns/{ns}") for ns in namespaces]
    host_ns = [os.readlink(f"/proc/self/ns/{ns}") for ns in namespaces]
    host_caps = Path("/proc/self/status").read_text()
    host_eff = next(line for line in host_caps.splitlines() if line.startswith("CapEff:"))
    guest_eff = next(
        line
        for line in Path(f"/proc/{init}/status").read_text().splitlines()
        if line.startswith("CapEff:")
    )
    for report in reports:
        lines = report.read_text().splitlines()
        assert lines[:4] == guest_ns, lines  # the guest's namespaces, and its cgroup's
        assert not set(lines[:4]) & set(host_ns)
        effective = next(line for line in lines if line.startswith("CapEff:"))
        assert effective.split()[1] == guest_eff.split()[1] != host_eff.split()[1]
        assert any(line.startswith("Seccomp:") and line.split()[1] != "0" for line in lines)
        # It sees the guest's processes only: no vs-pkg, no proxy, no host process at all.
        assert int(lines[-1]) < 20, lines


def test_a_stopped_guest_is_refused_unless_start_stopped(pkg_env: PkgEnv) -> None:
    pkg_env.host.run("vs-control", "--name", GUEST, "--stop")
    refused = pkg_env.pkg("--name", GUEST, "--install", "vsthello", check=False)
    assert refused.returncode == 4
    assert "--start-stopped" in refused.stderr
    pkg_env.pkg("--name", GUEST, "--update_sources", "--install", "vsthello", "--start-stopped")
    assert pkg_env.host.state(GUEST) is None  # stopped again
    status = (pkg_env.rootfs() / "var" / "lib" / "dpkg" / "status").read_text()
    assert "Package: vsthello\nStatus: install ok installed" in status


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_all_reports_each_guest_and_fails_if_one_failed(pkg_env: PkgEnv, jobs: str) -> None:
    pkg_env.host.define("bb", "198.51.100.31")  # busybox: no package manager
    pkg_env.host.run("vs-control", "--name", "bb", "--start")
    before = pkg_env.ruleset()
    result = pkg_env.pkg(
        "--all", "--jobs", jobs, "--update_sources", "--install", "vsthello", check=False
    )
    assert result.returncode == 2, result.stderr  # the worst: bb has no package manager
    assert "bb: guest bb: no supported package manager" in result.stderr
    assert pkg_env.installed("vsthello") == "1.0"
    assert pkg_env.ruleset() == before


def test_dry_run_changes_nothing(pkg_env: PkgEnv) -> None:
    before = pkg_env.ruleset()
    result = pkg_env.pkg("--name", GUEST, "--dry-run", "--update_sources", "--install", "vsthello")
    assert "would: deb: run in the guest: apt-get" in result.stderr
    assert pkg_env.installed("vsthello") == ""
    assert pkg_env.ruleset() == before


def test_concurrent_runs_share_the_proxy_address_and_leave_nothing(pkg_env: PkgEnv) -> None:
    pkg_env.add_debian("deb2", "198.51.100.32")
    before = pkg_env.ruleset()
    result = pkg_env.pkg("--all", "--jobs", "2", "--update_sources", "--install", "vsthello")
    assert result.stderr.count("install done") == 2, result.stderr
    assert pkg_env.installed("vsthello") == "1.0"
    out = pkg_env.host.exec("deb2", "dpkg-query", "-W", "-f=${Version}", "vsthello")
    assert out == "1.0"
    assert pkg_env.ruleset() == before
    addresses = subprocess.run(
        ["ip", "-n", pkg_env.host.netns, "-4", "addr"], capture_output=True, text=True, check=True
    ).stdout
    assert "169.254.80.1" not in addresses


def test_a_snapshot_before_changes_kept_until_the_next_success(pkg_env_btrfs: PkgEnv) -> None:
    env = pkg_env_btrfs
    record = Path(env.host.env["VS_STATE_DIR"]) / "pkg" / f"{GUEST}.snapshot.json"
    env.pkg("--name", GUEST, "--update_sources", "--install", "vsthello")
    first = json.loads(record.read_text())
    first_path = Path(first["path"])
    # Taken before the change: the package's file is not in it, but is in the guest.
    assert (first_path / "usr" / "share" / "vstpkg").exists() is False
    assert (env.rootfs() / "usr" / "share" / "vstpkg" / "vsthello").exists()
    time.sleep(1.1)  # snapshot tags are per second
    env.pkg("--name", GUEST, "--install", "vstother")
    second = json.loads(record.read_text())
    assert second["tag"] != first["tag"]
    assert Path(second["path"]).exists()
    assert not first_path.exists()  # the earlier one goes once a later run succeeded
    assert (Path(second["path"]) / "usr" / "share" / "vstpkg" / "vsthello").exists()
    env.pkg("--name", GUEST, "--remove", "vstother", "--no-snapshot")
    assert json.loads(record.read_text())["tag"] == second["tag"]


def test_a_guest_naming_the_hosts_loopback_as_its_mirror_is_refused(pkg_env: PkgEnv) -> None:
    write_sources(
        pkg_env.rootfs(), "deb [trusted=yes] http://127.0.0.1:8080/ vst main", pkg_env.mirror.ca
    )
    before = pkg_env.ruleset()
    result = pkg_env.pkg("--name", GUEST, "--update_sources", check=False)
    assert result.returncode == 2, result.stderr
    assert "127.0.0.1 resolves to 127.0.0.1, an address of the host" in result.stderr
    assert pkg_env.ruleset() == before


def test_a_mirror_name_re_pointed_at_the_host_during_the_run_leads_nowhere(
    pkg_env: PkgEnv,
) -> None:
    """DNS rebinding: the name passed the check at start, then resolves to the host itself. The
    proxy's own uid may not connect to the host's addresses (the output chain), so the guest
    still reaches no host service through it."""
    ns = netns_prefix(pkg_env.host.netns)
    server = subprocess.Popen(
        [*ns, sys.executable, "-m", "http.server", "--bind", "198.51.100.2", "8099"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        probe = (
            "import time, urllib.request\n"
            "for _ in range(100):\n"
            "    try:\n"
            "        print(urllib.request.urlopen('http://198.51.100.2:8099/').status); break\n"
            "    except OSError: time.sleep(0.05)\n"
        )
        # The host service answers (so a refusal below is the firewall's doing).
        ok = subprocess.run(
            [*ns, sys.executable, "-c", probe], capture_output=True, text=True, check=False
        )
        assert ok.stdout.strip() == "200"
        with held_run(pkg_env):
            port = int(str(_session(pkg_env)["port"]))
            pkg_env.hosts_file.write_text(f"127.0.0.1 localhost\n198.51.100.2 {MIRROR_NAME}\n")
            request = (
                f"exec 3<>/dev/tcp/169.254.80.1/{port};"
                f' printf "GET http://{MIRROR_NAME}:8099/ HTTP/1.0\\r\\nHost: {MIRROR_NAME}'
                '\\r\\n\\r\\n" >&3; head -1 <&3'
            )
            status = pkg_env.host.exec(GUEST, "timeout", "10", "bash", "-c", request, check=False)
            assert " 200 " not in status and status.strip(), status
            pkg_env.hosts_file.write_text(f"127.0.0.1 localhost\n{MIRROR_IP} {MIRROR_NAME}\n")
    finally:
        server.kill()  # by the PID this test started
        server.wait()


PRELOAD_SOURCE = r"""
#include <stdio.h>
#include <unistd.h>
#include <limits.h>
__attribute__((constructor)) static void vst_report(void) {
    char path[64], ns[PATH_MAX] = "";
    snprintf(path, sizeof path, "/var/tmp/vst-preload.%d", (int)getpid());
    ssize_t n = readlink("/proc/self/ns/mnt", ns, sizeof ns - 1);
    if (n > 0) ns[n] = 0;
    FILE *f = fopen(path, "w");
    if (f) { fprintf(f, "%s\n", ns); fclose(f); }
}
"""


def test_a_guest_ld_so_preload_runs_only_inside_the_guest(pkg_env: PkgEnv, tmp_path: Path) -> None:
    """H5: a library the guest preloads into every program it runs is loaded by the guest's apt
    and dpkg, each time inside the guest's mount namespace."""
    source = tmp_path / "vstpreload.c"
    source.write_text(PRELOAD_SOURCE)
    library = pkg_env.rootfs() / "usr" / "lib" / "vstpreload.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    (pkg_env.rootfs() / "etc" / "ld.so.preload").write_text("/usr/lib/vstpreload.so\n")
    pkg_env.pkg("--name", GUEST, "--update_sources", "--install", "vsthello")
    assert pkg_env.installed("vsthello") == "1.0"
    reports = list((pkg_env.rootfs() / "var" / "tmp").glob("vst-preload.*"))
    assert reports, "the guest's preload never ran"
    state = pkg_env.host.state(GUEST)
    assert state is not None
    guest_mnt = os.readlink(f"/proc/{state['init_pid']}/ns/mnt")
    assert {r.read_text().strip() for r in reports} == {guest_mnt}


def _set_timeout(env: PkgEnv, seconds: int) -> None:
    conf = Path(env.host.env["VS_ETC_DIR"]) / "vs-tools.conf"
    conf.write_text(conf.read_text() + f"PKG_TIMEOUT={seconds}\n")


def test_a_run_past_pkg_timeout_is_ended_and_closed(pkg_env: PkgEnv) -> None:
    _set_timeout(pkg_env, 8)
    before = pkg_env.ruleset()
    with held_run(pkg_env) as process:
        process.wait(timeout=120)  # the hold is never released: the timeout ends the run
        assert process.returncode == 5
        assert process.stderr is not None
        assert "PKG_TIMEOUT=8" in process.stderr.read()
        assert pkg_env.ruleset() == before


def test_after_kill_9_the_element_expires_by_itself(pkg_env: PkgEnv) -> None:
    _set_timeout(pkg_env, 8)  # the element lives 8 + 8 s
    before = pkg_env.ruleset()
    with held_run(pkg_env) as process:
        process.kill()
        process.wait()
        assert pkg_env.ruleset() != before
        deadline = time.monotonic() + 60
        while pkg_env.ruleset() != before and time.monotonic() < deadline:
            time.sleep(0.5)
        # Nothing ran to clean up: the kernel removed the element when its timeout passed.
        assert pkg_env.ruleset() == before


def test_all_with_changes_asks_on_a_terminal_only(host: Host) -> None:
    """--all with a step that changes packages is confirmed on a terminal, as vs-control's."""
    from tests.cli.test_confirm import on_terminal

    host.define("web", "198.51.100.10")
    code, shown = on_terminal(host, "vs-pkg", "--all", "--install", "x", answer=b"n\n")
    assert code == 7 and "Run --install on 1 guest (web)? [y/N]" in shown, shown
    code, shown = on_terminal(host, "vs-pkg", "--all", "--install", "x", answer=b"y\n")
    assert code == 4 and "--start-stopped" in shown, shown  # answered yes: web is stopped
    code, shown = on_terminal(host, "vs-pkg", "--all", "--search", "x", answer=None)
    assert code == 4, shown  # a search changes nothing: no question
    code, shown = on_terminal(host, "vs-pkg", "--all", "--yes", "--install", "x", answer=None)
    assert code == 4, shown


def test_a_progress_bar_on_a_terminal(pkg_env: PkgEnv) -> None:
    """On a terminal apt's status lines (APT::Status-Fd) draw a bar instead of its output."""
    master, slave = os.openpty()
    process = subprocess.Popen(
        pkg_env.pkg_argv("--name", GUEST, "--update_sources", "--install", "vsthello"),
        stdin=slave, stdout=slave, stderr=slave, env=pkg_env.host.env,
    )  # fmt: skip
    os.close(slave)
    shown = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 120)
            assert ready, shown
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the command closed its end of the terminal
                break
            if not chunk:
                break
            shown += chunk
        assert process.wait(timeout=60) == 0, shown
    finally:
        if process.poll() is None:
            process.kill()  # by the PID this test started
            process.wait()
        os.close(master)
    text = shown.decode(errors="replace")
    assert f"{GUEST} install [" in text and "100%" in text, text
    assert "Setting up vsthello" not in text  # the bar replaces the tool's own lines
    assert f"{GUEST}: install done" in text
    assert pkg_env.installed("vsthello") == "1.0"
