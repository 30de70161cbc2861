"""The adversarial catalogue (TESTING.md A1-A9): a hostile root inside a running guest, in
either mode, tries what a review found to work, and every attempt must fail. The attacks are
the static probe tests/probe/vstattack.c, run inside the guest."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.guests import Host, Lan, host_ip, host_nft, serve
from vstools.runtime.sandbox import guest_dropped_caps

pytestmark = [pytest.mark.privileged, pytest.mark.e2e]


@pytest.fixture(params=[False, True], ids=["root", "userns"])
def attacked(host: Host, attack_binary: Path, request: pytest.FixtureRequest) -> Host:
    """A running guest holding the attack probe, in each mode."""
    host.attack = attack_binary
    host.define("web", "198.51.100.10", userns=request.param)
    host.run("vs-control", "--name", "web", "--start")
    return host


def _userns(host: Host, name: str = "web") -> bool:
    return "USERNS=yes" in (host.guests_dir / name / "guest.conf").read_text()


def _wait_for(what: str, ready: Callable[[], bool], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _results(out: str) -> dict[str, str]:
    """ "name ok" / "name errno=N" / "name VALUE" lines as a dict."""
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


# -- A1: the vs-exec helper ---------------------------------------------------------------------

EXECS = 30
TTY_EXECS = 10


def _breaches(records: list[dict[str, str]], dropped_mask: int) -> list[dict[str, str]]:
    """What the watcher saw that a guest's root must never see: a process holding a capability
    the guest lacks or no seccomp filter, or a host program (before its exec) that it could
    ptrace or take descriptors from."""
    found = []
    for record in records:
        caps = int(record["capeff"], 16) | int(record["capbnd"], 16)
        host_program = record["host"] != "0"
        if (
            caps & dropped_mask
            or record["seccomp"] != "2"
            or (host_program and (record["ptrace"] == "1" or record["stolen"] != "0"))
        ):
            found.append(record)
    return found


def test_a1_no_helper_is_visible_attachable_or_fd_stealable(attacked: Host) -> None:
    """A guest process watching /proc during many vs-exec calls (pipes and terminals) tries to
    ptrace every new process and to take its descriptors with pidfd_getfd: it must only ever
    find processes with the guest's own privileges, and no host program it can attach to."""
    host = attacked
    log = host.rootfs("web") / "root" / "watch.log"
    host.exec("web", "sh", "-c", "vstattack watch 300 > /root/watch.log 2>&1 &")
    _wait_for("the watcher", lambda: log.exists() and "watching" in log.read_text())
    for _ in range(EXECS):
        host.run("vs-exec", "-T", "web", "--", "sleep", "0.05")
    for _ in range(TTY_EXECS):
        host.run("vs-exec", "-t", "web", "--", "sleep", "0.05")
    (host.rootfs("web") / "vstwatch.stop").touch()
    _wait_for("the watcher's end", lambda: "done" in log.read_text())
    records = [
        dict(field.split("=", 1) for field in line.split()[1:])
        for line in log.read_text().splitlines()
        if line.startswith("seen ")
    ]
    commands = [r for r in records if r["name"] in ("sleep", "vs-exec")]
    # The watcher did see the commands (so this test can fail), and each was clean.
    assert len(commands) >= (EXECS + TTY_EXECS) // 2, log.read_text()
    mask = sum(1 << cap for cap in guest_dropped_caps(in_user_namespace=_userns(host)))
    assert _breaches(records, mask) == []


# -- A2: nested user namespace and cgroup mounts ------------------------------------------------


def test_a2_a_nested_user_namespace_reaches_no_cgroup(attacked: Host) -> None:
    """Inside the guest: a user namespace mapping 0 to the guest's root, new mount and cgroup
    namespaces, then every cgroup hierarchy mounted. A root-mode guest cannot make the user
    namespace at all (as Docker's default profile); a user-namespace guest may nest one, but
    every hierarchy it mounts shows only its own group, and nothing in it is writable."""
    host = attacked
    memory = host.cgroup_dir("memory", "web") / "memory.limit_in_bytes"
    pids = host.cgroup_dir("pids", "web") / "pids.max"
    before = memory.read_text(), pids.read_text()
    out = host.exec("web", "vstattack", "cgescape")
    results = _results(out)
    if not _userns(host):
        assert results["clone3-newuser"] == "errno=38", out  # ENOSYS: libc falls back to clone
        assert results["clone-newuser"] == "errno=1", out
        assert results["unshare-newuser"] == "errno=1", out
        assert results["unshare-mnt-cgroup"] == "errno=1", out
    mounted = [key.removeprefix("mount-") for key, value in results.items()
               if key.startswith("mount-") and value == "ok"]  # fmt: skip
    if not _userns(host):
        assert mounted == [], out
    for hierarchy in mounted:
        assert results[f"subdirs-{hierarchy}"] == "0", out  # its own group, not the host's root
        assert results[f"mkdir-{hierarchy}"] != "ok", out
    assert [
        key for key, value in results.items() if key.startswith("write-") and value == "ok"
    ] == []
    assert (memory.read_text(), pids.read_text()) == before


def test_a2_every_hierarchy_holds_the_guest_in_a_group_of_its_own(attacked: Host) -> None:
    """The guest's init is in a group of its own in every mounted hierarchy, so that even a
    view of a hierarchy the guest has no limit in shows its own group only."""
    state = attacked.state("web")
    assert state is not None
    membership = Path(f"/proc/{state['init_pid']}/cgroup").read_text().splitlines()
    assert membership  # one line per hierarchy
    for line in membership:
        _, _, path = line.split(":", 2)
        assert path == f"/{attacked.cgroup_parent}/web", line


# -- A8: limits bounded, and shown as the kernel enforces them ----------------------------------


def test_a8_vs_limit_shows_the_kernel_and_repairs_drift(host: Host) -> None:
    host.define("lim", "198.51.100.12", rss=64, proc=32)
    host.run("vs-control", "--name", "lim", "--start")
    memory = host.cgroup_dir("memory", "lim") / "memory.limit_in_bytes"
    pids = host.cgroup_dir("pids", "lim") / "pids.max"
    memory.write_text(str(128 << 20))  # changed behind vs-tools' back
    pids.write_text("99")
    shown = host.run("vs-limit", "--name", "lim")
    row = shown.stdout.strip().split(":")
    assert row[2].endswith("/128") and row[5].endswith("/99"), shown.stdout
    assert "rss 128 MB" in shown.stderr and "guest.conf says 64" in shown.stderr
    assert "proc 99" in shown.stderr and "guest.conf says 32" in shown.stderr
    repaired = host.run("vs-limit", "--name", "lim", "--rss", "64", "--proc", "32")
    assert int(memory.read_text()) == 64 << 20 and pids.read_text().strip() == "32"
    assert "guest.conf says" not in repaired.stderr
    row = repaired.stdout.strip().split(":")
    assert row[2].endswith("/64") and row[5].endswith("/32")


@pytest.mark.parametrize(
    "option",
    [("--rss", "9999999999999999"), ("--tmpfs", "99999999"), ("--proc", "99999999999")],
    ids=["rss", "tmpfs", "proc"],
)
def test_a8_limits_beyond_what_the_kernel_takes_are_refused(
    host: Host, option: tuple[str, str]
) -> None:
    host.define("lim", "198.51.100.12", rss=64, proc=32)
    host.run("vs-control", "--name", "lim", "--start")
    memory = host.cgroup_dir("memory", "lim") / "memory.limit_in_bytes"
    conf = (host.guests_dir / "lim" / "guest.conf").read_text()
    refused = host.run("vs-limit", "--name", "lim", *option, check=False)
    assert refused.returncode == 2 and "out of range" in refused.stderr, refused.stderr
    assert int(memory.read_text()) == 64 << 20
    assert (host.guests_dir / "lim" / "guest.conf").read_text() == conf


def test_rt_scheduling_is_refused_in_a_guest(attacked: Host) -> None:
    """A SCHED_FIFO task escapes the CFS quota on kernels without RT group scheduling; no
    guest gets one, in either mode (the VM lab runs this on Debian's kernel too)."""
    results = _results(attacked.exec("web", "vstattack", "rt"))
    assert results == {"sched-fifo": "errno=1", "sched-rr": "errno=1"}


def test_capability_sets_by_mode(attacked: Host) -> None:
    status = attacked.exec("web", "cat", "/proc/self/status")
    effective = int(re.search(r"CapEff:\t(\w+)", status).group(1), 16)  # type: ignore[union-attr]
    ptrace_linux_immutable = (1 << 19) | (1 << 9)
    if _userns(attacked):
        assert effective & ptrace_linux_immutable == ptrace_linux_immutable  # its own userns
    else:
        assert effective & ptrace_linux_immutable == 0


# -- A3: set-id files planted in a guest --------------------------------------------------------


@pytest.fixture
def world_root(run_prefix: str) -> Iterator[Path]:
    """A directory any user may traverse (unlike pytest's own tmp tree, which is 0700): an
    old install's ROOT_DIR under it is what host users would reach. Set up before the test
    host, so it is removed after the guests have stopped."""
    top = Path(tempfile.mkdtemp(prefix=f"{run_prefix}-a3-"))
    top.chmod(0o755)
    yield top
    shutil.rmtree(top)


@pytest.fixture(params=[False, True], ids=["root", "userns"])
def exposed(
    world_root: Path, host: Host, attack_binary: Path, request: pytest.FixtureRequest
) -> Host:
    """A running guest whose ROOT_DIR was left 0755 by an older install."""
    root_dir = world_root / "vservers"
    root_dir.mkdir(mode=0o755)
    host.env["VS_ROOT_DIR"] = str(root_dir)
    host.attack = attack_binary
    host.define("web", "198.51.100.10", userns=request.param)
    host.run("vs-control", "--name", "web", "--start")
    return host


def test_a3_a_setuid_file_planted_in_a_guest_is_out_of_host_users_reach(exposed: Host) -> None:
    host = exposed
    host.exec("web", "sh", "-c", "cp /usr/bin/vstattack /sx && chmod 4755 /sx")
    planted = host.rootfs("web") / "sx"
    assert planted.stat().st_uid == 0 and planted.stat().st_mode & 0o4000  # root's, set-uid
    root_dir = Path(host.env["VS_ROOT_DIR"])
    assert stat.S_IMODE(root_dir.stat().st_mode) == 0o700  # closed by the start
    # As a host user (subprocess sets the ids before exec; setpriv keeps its capabilities
    # up to the exec, which would hide the point).
    tried = _as_nobody([str(planted), "euid"])
    assert tried.returncode == 126 and "Permission denied" in tried.stderr, tried
    assert "euid 0" not in tried.stdout
    # vs-setup closes it too, and says so.
    root_dir.chmod(0o755)
    etc = host.env["VS_ETC_DIR"]
    setup = host.run("vs-setup", "--etc-dir", etc, "--unit-dir", str(host.root / "units"))
    assert f"secured:{root_dir}" in setup.stdout
    assert stat.S_IMODE(root_dir.stat().st_mode) == 0o700


def _as_nobody(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as an unprivileged host user; 126 and its reason when it cannot run."""
    try:
        return subprocess.run(
            argv,
            user=65534,
            group=65534,
            extra_groups=[],
            capture_output=True,
            text=True,
            check=False,
        )
    except PermissionError as exc:  # the exec itself was refused, in the child
        return subprocess.CompletedProcess(argv, 126, "", f"{exc.strerror}")


# -- A4: racing and corrupt state ---------------------------------------------------------------

RACE_ROUNDS = 10
RACERS = 3


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except FileNotFoundError:
        return False


def test_a4_racing_starts_leave_one_running_guest(host: Host) -> None:
    """RACE_ROUNDS rounds of RACERS simultaneous starts: one wins, the others are refused
    and leave the guest that won alone (the losers used to kill it)."""
    host.define("web", "198.51.100.10")
    for _ in range(RACE_ROUNDS):
        racers = [host.popen("vs-control", "--name", "web", "--start") for _ in range(RACERS)]
        codes = sorted(p.wait(timeout=60) for p in racers)
        outputs = [p.communicate()[1] for p in racers]
        assert codes == [0] + [4] * (RACERS - 1), outputs
        state = host.state("web")
        assert state is not None and _alive(int(str(state["init_pid"])))
        assert host.run("vs-control", "--name", "web").stdout == "vsh-test:web:disabled:running\n"
        host.run("vs-control", "--name", "web", "--stop")


@pytest.mark.parametrize("garbage", ["garbage", "{}", '{"name": 1}', "[]"])
def test_a4_a_corrupt_state_file_is_reported_and_never_kills(host: Host, garbage: str) -> None:
    host.define("web", "198.51.100.10")
    host.run("vs-control", "--name", "web", "--start")
    state = host.state("web")
    assert state is not None
    init = int(str(state["init_pid"]))
    (Path(host.env["VS_RUN_DIR"]) / "guests" / "web" / "state.json").write_text(garbage)
    status = host.run("vs-control", "--name", "web")
    assert status.stdout == "vsh-test:web:disabled:running\n"
    assert "is corrupt" in status.stderr
    again = host.run("vs-control", "--name", "web", "--start", check=False)
    assert again.returncode == 4 and "already running" in again.stderr
    assert _alive(init)
    listed = host.run("vs-control", "--all")
    assert listed.stdout == "vsh-test:web:disabled:running\n"
    stopped = host.run("vs-control", "--name", "web", "--stop")  # found by its lock
    assert stopped.stdout == "vsh-test:web:disabled:stopped\n"
    assert not _alive(init) and host.state("web") is None


# -- A5: a killed supervisor ---------------------------------------------------------------------


def _kill_supervisor(host: Host, name: str) -> tuple[int, int]:
    state = host.state(name)
    assert state is not None
    supervisor, init = int(str(state["supervisor_pid"])), int(str(state["init_pid"]))
    os.kill(supervisor, signal.SIGKILL)
    _wait_for("the supervisor's end", lambda: not _alive(supervisor))
    return supervisor, init


def test_a5_a_killed_supervisor_leaves_a_truthful_status_and_a_clean_restart(
    routed: tuple[Host, Lan],
) -> None:
    host, _ = routed
    host.define("web", "198.51.100.10")
    (host.guests_dir / "web" / "firewall.conf").write_text("enable\nallow from 0/0 to tcp/80\n")
    host.run("vs-control", "--name", "web", "--start")
    state = host.state("web")
    assert state is not None
    supervisor, init = int(str(state["supervisor_pid"])), int(str(state["init_pid"]))
    # The supervisor is kept from the OOM killer where the host lets it (CAP_SYS_RESOURCE);
    # the guest's processes never inherit that.
    own_caps = int(re.search(r"CapEff:\t(\w+)", Path("/proc/self/status").read_text())[1], 16)  # type: ignore[index]
    expected = (
        "-1000" if own_caps & (1 << 24) else Path("/proc/self/oom_score_adj").read_text().strip()
    )
    assert Path(f"/proc/{supervisor}/oom_score_adj").read_text().strip() == expected
    assert Path(f"/proc/{init}/oom_score_adj").read_text().strip() == "0"
    _kill_supervisor(host, "web")
    assert _alive(init)
    status = host.run("vs-control", "--name", "web")
    assert status.stdout == "vsh-test:web:disabled:running\n"
    assert "without its supervisor" in status.stderr
    refused = host.run("vs-control", "--name", "web", "--start", check=False)
    assert refused.returncode == 4 and "without its supervisor" in refused.stderr
    assert _alive(init)
    stopped = host.run("vs-control", "--name", "web", "--stop")
    assert stopped.stdout == "vsh-test:web:disabled:stopped\n"
    assert not _alive(init)
    assert not host.cgroup_dir("memory", "web").exists()
    assert "vs10001" not in host_ip(host, "link") and "198.51.100.10" not in host_ip(host, "route")
    assert "in_web" not in host_nft(host, "list", "ruleset")
    # Started again: everything is there once.
    host.run("vs-control", "--name", "web", "--start")
    assert "vs10001" in host_ip(host, "link") and "in_web" in host_nft(host, "list", "ruleset")
    # Killed again, and this time its processes too (by PID): the next start cleans up what
    # was left (cgroup, veth, route, firewall) and starts.
    _, init = _kill_supervisor(host, "web")
    cgroup = host.cgroup_dir("memory", "web")
    for pid in (cgroup / "cgroup.procs").read_text().split():
        os.kill(int(pid), signal.SIGKILL)
    _wait_for("the guest's end", lambda: not (cgroup / "cgroup.procs").read_text().split())
    assert host.run("vs-control", "--name", "web").stdout == "vsh-test:web:disabled:stopped\n"
    host.run("vs-control", "--name", "web", "--start")
    assert host_ip(host, "-o", "link").count("vs10001") == 1
    # Orphaned once more: what the host runs at shutdown (--all --stop) reaches it too.
    _, init = _kill_supervisor(host, "web")
    stopped = host.run("vs-control", "--all", "--stop")
    assert stopped.stdout == "vsh-test:web:disabled:stopped\n" and not _alive(init)
    assert "vs10001" not in host_ip(host, "link") and "in_web" not in host_nft(
        host, "list", "ruleset"
    )


# -- A6: duplicate addresses at start ----------------------------------------------------------


def test_a6_a_duplicate_address_is_refused_at_start(routed: tuple[Host, Lan]) -> None:
    host, lan = routed
    host.define("web", "198.51.100.10")
    host.define("evil", "198.51.100.11")
    host.define("twin", "198.51.100.12", context=10001)  # web's context: web's interface
    for name in ("web", "evil"):
        (host.guests_dir / name / "firewall.conf").write_text("enable\nallow from 0/0 to tcp/80\n")
    host.run("vs-control", "--name", "web", "--start")
    conf = host.guests_dir / "evil" / "guest.conf"
    conf.write_text(conf.read_text().replace("198.51.100.11", "198.51.100.10"))
    refused = host.run("vs-control", "--name", "evil", "--start", check=False)
    assert refused.returncode == 4, refused.stderr
    assert "the address 198.51.100.10 is the running guest web's" in refused.stderr
    twin = host.run("vs-control", "--name", "twin", "--start", check=False)
    assert twin.returncode == 4 and "the interface vs10001" in twin.stderr, twin.stderr
    # web keeps its route, its proxy ARP and its firewall: a port its rules deny stays shut.
    assert "198.51.100.10 dev vs10001" in host_ip(host, "route")
    fw_in = host_nft(host, "list", "map", "inet", "vstools", "fw_in")
    assert re.search(r'198\.51\.100\.10 (comment "vst:[0-9a-f]+" )?: jump in_web\b', fw_in), fw_in
    serve(host, "web", "tcp", 80)
    serve(host, "web", "tcp", 8080)
    assert lan.connect("198.51.100.10", 80) == "open"
    assert lan.connect("198.51.100.10", 8080) == "refused"


# -- A7: host walks ------------------------------------------------------------------------------


def test_a7_the_disk_walk_never_follows_a_guest_symlink(attacked: Host, tmp_path: Path) -> None:
    """The guest exchanges a directory and a symlink to a big host directory as fast as it
    can while vs-limit measures its disk: the host directory is never counted."""
    host = attacked
    bait = tmp_path / "host-only"
    bait.mkdir()
    (bait / "blob").write_bytes(b"\0" * (64 << 20))  # 64 MB, allocated
    script = f"mkdir -p /root/d && ln -sfn {bait} /root/l && vstattack swap /root/d /root/l 8"
    swapper = host.popen("vs-exec", "-T", "web", "--", "sh", "-c", script)
    deadline = time.monotonic() + 6
    measured = []
    while time.monotonic() < deadline:
        row = host.run("vs-limit", "--name", "web").stdout.strip().split(":")
        measured.append(int(row[3].split("/")[0]))
    out, _ = swapper.communicate(timeout=30)
    assert int(out.split()[-1]) > 1000, out  # it did swap, many times
    assert len(measured) >= 3 and max(measured) < 32, measured


def test_a7_a_symlinked_root_is_refused_cleanly(host: Host) -> None:
    host.define("web", "198.51.100.10")
    root = host.rootfs("web")
    elsewhere = root.with_name("elsewhere")
    root.rename(elsewhere)
    root.symlink_to(elsewhere)
    started = host.run("vs-control", "--name", "web", "--start", check=False)
    assert started.returncode == 4 and "is a symlink: refused" in started.stderr, started.stderr
    row = host.run("vs-limit", "--name", "web").stdout.strip().split(":")
    assert row[3].startswith("0/")  # not the target's size
    assert host.state("web") is None


# -- A8: the rest ----------------------------------------------------------------------------------


def test_a8_a_flooded_console_costs_the_supervisor_almost_nothing(host: Host) -> None:
    host.define("web", "198.51.100.10")
    host.run("vs-control", "--name", "web", "--start")
    state = host.state("web")
    assert state is not None
    supervisor = int(str(state["supervisor_pid"]))

    def cpu_ticks() -> int:
        fields = Path(f"/proc/{supervisor}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime

    flood = host.exec("web", "sh", "-c", "yes vstflood > /dev/console 2>/dev/null & echo $!")
    before, start = cpu_ticks(), time.monotonic()
    time.sleep(3)
    used = (cpu_ticks() - before) / os.sysconf("SC_CLK_TCK") / (time.monotonic() - start)
    host.exec("web", "kill", flood.strip())
    console = Path(host.env["VS_RUN_DIR"]) / "guests" / "web" / "console.log"
    assert "vstflood" in console.read_text()  # it was read, at its pace
    assert used < 0.05, f"the supervisor spent {used:.0%} of a CPU on the console"


def test_a8_all_names_a_guest_whose_config_broke(host: Host) -> None:
    host.define("db", "198.51.100.11")
    host.define("web", "198.51.100.10")
    conf = host.guests_dir / "db" / "guest.conf"
    conf.write_text(conf.read_text() + "RSS_LIMIT=lots\n")
    listed = host.run("vs-control", "--all", check=False)
    assert listed.returncode == 1
    assert listed.stdout == "vsh-test:web:disabled:stopped\n"
    assert f"{conf}:" in listed.stderr and "RSS_LIMIT" in listed.stderr


def test_a8_a_stop_during_the_start_is_kept(host: Host) -> None:
    """A stop sent while the supervisor is still building the guest is carried out as soon as
    the guest runs; it used to be lost (or to kill the supervisor and orphan the guest)."""
    host.define("web", "198.51.100.10")
    state_file = Path(host.env["VS_RUN_DIR"]) / "guests" / "web" / "state.json"
    caught = 0
    for _ in range(10):
        starter = host.popen("vs-control", "--name", "web", "--start")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and starter.poll() is None:
            with contextlib.suppress(FileNotFoundError, ValueError):
                if json.loads(state_file.read_text()).get("phase") == "starting":
                    break
            time.sleep(0.001)
        in_start = starter.poll() is None and state_file.exists()
        stopper = host.run("vs-control", "--name", "web", "--stop", check=False)
        starter.communicate(timeout=60)
        caught += in_start and stopper.returncode == 0
        _wait_for("the stop", lambda: host.state("web") is None)
        assert host.run("vs-control", "--name", "web").stdout == "vsh-test:web:disabled:stopped\n"
        assert not host.cgroup_dir("memory", "web").exists()
        if caught >= 2:
            break
    assert caught >= 1


def test_a8_chattr_immutable_is_refused_in_a_guest(attacked: Host) -> None:
    attacked.exec("web", "touch", "/root/f")
    out = attacked.exec("web", "vstattack", "immutable", "/root/f")
    assert out.strip() == "chattr-immutable errno=1"


def test_a8_a_disk_limit_on_dir_storage_says_it_is_not_enforced(host: Host) -> None:
    host.define("web", "198.51.100.10")
    changed = host.run("vs-limit", "--name", "web", "--disk", "512")
    assert "STORAGE=dir enforces no disk limit" in changed.stderr


def test_a8_a_killed_vs_create_leaves_nothing_the_next_one_does_not_remove(host: Host) -> None:
    big = host.root / "big"
    shutil.copytree(host.template, big, symlinks=True)
    (big / "filler").write_bytes(b"\0" * (384 << 20))
    template = host.root / "big.tar.gz"
    subprocess.run(["tar", "-I", "gzip -1", "-cf", str(template), "-C", str(big), "."], check=True)
    shutil.rmtree(big)
    etc = Path(host.env["VS_ETC_DIR"])
    (etc / "create.conf").write_text(f"DEFAULT_TEMPLATE={template}\n")
    creator = host.popen("vs-create", "--name", "web", "--interface", "198.51.100.10")
    root = host.rootfs("web")
    _wait_for("the unpack", lambda: root.is_dir() and any(root.iterdir()))
    creator.kill()  # by the PID this test started
    creator.wait()
    host.guests.append("web")
    assert (host.guests_dir / "web").exists()  # what it left
    assert host.run("vs-control", "--all").stdout == ""
    checked = host.run("vs-check", check=False)
    assert "a vs-create of web was interrupted" in checked.stderr
    (etc / "create.conf").write_text(f"DEFAULT_TEMPLATE={host.root / 'small.tar'}\n")
    subprocess.run(
        ["tar", "-cf", str(host.root / "small.tar"), "-C", str(host.template), "."], check=True
    )
    again = host.run("vs-create", "--name", "web", "--interface", "198.51.100.10")
    assert "removed web: an earlier vs-create or vs-remove of it was interrupted" in again.stderr
    assert not (root / "filler").exists()
    assert host.run("vs-control", "--all").stdout == "vsh-test:web:disabled:stopped\n"


# -- A9: a stop always works ---------------------------------------------------------------------


@pytest.mark.parametrize("broken", ["guest.conf", "firewall.conf", "both", "removed"])
def test_a9_stop_and_exec_work_whatever_the_guest_files_say(host: Host, broken: str) -> None:
    host.define("web", "198.51.100.10")
    host.run("vs-control", "--name", "web", "--start")
    directory = host.guests_dir / "web"
    if broken in ("guest.conf", "both"):
        (directory / "guest.conf").write_text("NAME=web\nRSS_LIMIT=lots\n")
    if broken in ("firewall.conf", "both"):
        (directory / "firewall.conf").write_text("allow from nowhere\n")
    if broken == "removed":
        shutil.rmtree(directory)
    else:
        assert host.exec("web", "echo", "mendable") == "mendable\n"
    stopped = host.run("vs-control", "--name", "web", "--stop")
    assert stopped.returncode == 0
    assert host.state("web") is None and not host.cgroup_dir("memory", "web").exists()
