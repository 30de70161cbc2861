"""Fixtures for tests that run real guests: a host tree (VS_* directories, vs-tools.conf with a
per-run cgroup parent), a busybox template built once per session, a static probe binary, and a
finalizer that stops every guest by its supervisor's PID and removes the cgroups, also when the
test fails."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness.btrfs import btrfs_loop
from harness.cgroups import remove_tree
from vstools.guest.templates import build_busybox_rootfs
from vstools.host.syscalls import CLONE_NEWNET, setns

BIN = Path(sys.executable).parent
PROBE_SOURCE = Path(__file__).parent / "probe" / "vstprobe.c"
NET_PROBE_SOURCE = Path(__file__).parent / "probe" / "vstnet.c"
ATTACK_SOURCE = Path(__file__).parent / "probe" / "vstattack.c"
GUEST_CONF = (
    "NAME={name}\nCONTEXT={context}\nIP={ip}\nRSS_LIMIT={rss}\nDISK_LIMIT=256\n"
    "TMPFS_LIMIT={tmpfs}\nPROC_LIMIT={proc}\nCPU_LIMIT={cpu}\n"
)


@dataclass
class Host:
    """One test host: its directories and environment, and the guests defined on it."""

    root: Path
    env: dict[str, str]
    cgroup_parent: str
    template: Path
    probe: Path
    netns: str  # every test host runs in a network namespace of its own (TESTING.md rule 1)
    net_probe: Path | None = None
    attack: Path | None = None  # the adversarial probe, copied into guests when set
    guests: list[str] = field(default_factory=list)

    @property
    def guests_dir(self) -> Path:
        return Path(self.env["VS_GUESTS_CONF_DIR"])

    def rootfs(self, name: str) -> Path:
        return Path(self.env["VS_ROOT_DIR"]) / name

    def define(
        self,
        name: str,
        ip: str,
        *,
        context: int | None = None,
        rss: int = 64,
        tmpfs: int = 8,
        proc: int = 64,
        cpu: str = "1/2",
        userns: bool = False,
    ) -> Path:
        """A guest from the busybox template, with the probe in /usr/bin."""
        shutil.copytree(self.template, self.rootfs(name), symlinks=True)
        shutil.copy2(self.probe, self.rootfs(name) / "usr" / "bin" / "vstprobe")
        if self.net_probe is not None:
            shutil.copy2(self.net_probe, self.rootfs(name) / "usr" / "bin" / "vstnet")
        if self.attack is not None:
            shutil.copy2(self.attack, self.rootfs(name) / "usr" / "bin" / "vstattack")
        directory = self.guests_dir / name
        directory.mkdir()
        (directory / "guest.conf").write_text(
            GUEST_CONF.format(
                name=name,
                ip=ip,
                context=context or 10000 + len(self.guests) + 1,
                rss=rss,
                tmpfs=tmpfs,
                proc=proc,
                cpu=cpu,
            )
            + ("USERNS=yes\n" if userns else "")
        )
        self.guests.append(name)
        return directory

    def run(
        self,
        *argv: str,
        check: bool = True,
        input: str | None = None,
        timeout: float = 60,
        machine_network: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run an installed vs-* command as an administrator would, in the test host's network
        namespace; ``machine_network`` for a command that must download (debootstrap) and
        changes nothing of the network."""
        prefix = [] if machine_network else netns_prefix(self.netns)
        result = subprocess.run(
            [*prefix, str(BIN / argv[0]), *argv[1:]],
            env=self.env,
            text=True,
            capture_output=True,
            # Never the terminal pytest may run on: a command asks for confirmation only there.
            input=input if input is not None else "",
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
            )
        return result

    def popen(self, *argv: str) -> subprocess.Popen[str]:
        """Start an installed vs-* command in the background (stop it by this PID)."""
        return subprocess.Popen(
            [*netns_prefix(self.netns), str(BIN / argv[0]), *argv[1:]],
            env=self.env,
            text=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def exec(self, name: str, *command: str, check: bool = True) -> str:
        return self.run("vs-exec", "-T", name, "--", *command, check=check).stdout

    def state(self, name: str) -> dict[str, object] | None:
        path = Path(self.env["VS_RUN_DIR"]) / "guests" / name / "state.json"
        try:
            data: dict[str, object] = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        return data

    def cgroup_dir(self, controller: str, name: str = "") -> Path:
        return Path("/sys/fs/cgroup") / controller / self.cgroup_parent / name


@pytest.fixture(scope="session")
def busybox_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_busybox_rootfs(tmp_path_factory.mktemp("template") / "rootfs")


def _static_binary(directory: Path, source: Path) -> Path:
    target = directory / source.stem
    subprocess.run(
        ["gcc", "-static", "-O1", "-o", str(target), str(source)], check=True, capture_output=True
    )
    return target


@pytest.fixture(scope="session")
def probe_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _static_binary(tmp_path_factory.mktemp("probe"), PROBE_SOURCE)


@pytest.fixture(scope="session")
def attack_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _static_binary(tmp_path_factory.mktemp("attack"), ATTACK_SOURCE)


@pytest.fixture(scope="session")
def net_probe_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _static_binary(tmp_path_factory.mktemp("netprobe"), NET_PROBE_SOURCE)


def netns_prefix(netns: str) -> list[str]:
    """Run a command in a named network namespace, and only that: unlike `ip netns exec`,
    nsenter does not remount /sys (which would hide the cgroup hierarchies)."""
    return ["nsenter", f"--net=/run/netns/{netns}", "--"]


def host_nft(host: Host, *argv: str) -> str:
    """``nft ARGV`` in the test host's network namespace: its output (empty on failure)."""
    return subprocess.run(
        [*netns_prefix(host.netns), "nft", *argv], capture_output=True, text=True, check=False
    ).stdout


def host_ip(host: Host, *argv: str) -> str:
    """``ip ARGV`` in the test host's network namespace: its output (empty on failure)."""
    return subprocess.run(
        ["ip", "-n", host.netns, *argv], capture_output=True, text=True, check=False
    ).stdout


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """This thread (and what it forks) in a named network namespace, then back."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        setns(target, CLONE_NEWNET)
        yield
    finally:
        setns(home, CLONE_NEWNET)
        os.close(home)
        os.close(target)


@contextlib.contextmanager
def named_netns(name: str) -> Iterator[str]:
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


@pytest.fixture
def host(
    tmp_path: Path,
    etc_tree: dict[str, str],
    run_prefix: str,
    busybox_template: Path,
    probe_binary: Path,
) -> Iterator[Host]:
    """A test host on the etc_tree directories, with its own cgroup parent."""
    parent = f"{run_prefix}-{secrets_hex()}"
    (Path(etc_tree["VS_ETC_DIR"]) / "vs-tools.conf").write_text(
        f"CGROUP_PARENT={parent}\nSTOP_TIMEOUT=5\nHOSTNAME=vsh-test\nNETWORK=none\n"
    )
    env = dict(etc_tree, VS_NO_SYSTEMD="1")
    with named_netns(f"{parent}-host") as netns:
        test_host = Host(tmp_path, env, parent, busybox_template, probe_binary, netns)
        try:
            yield test_host
        finally:
            _teardown(test_host)


def secrets_hex() -> str:
    return os.urandom(2).hex()


def _teardown(test_host: Host) -> None:
    """Stop every guest by its supervisor's PID, then make sure no process, cgroup or mount of
    this host is left."""
    for name in test_host.guests:
        state = test_host.state(name)
        if state is None:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(str(state["supervisor_pid"])), signal.SIGTERM)
    deadline = time.monotonic() + 15
    while any(test_host.state(n) for n in test_host.guests) and time.monotonic() < deadline:
        time.sleep(0.05)
    # Every hierarchy (a guest has a group in each), and "": the one tree of a cgroup v2 host
    # (the VM lab), /sys/fs/cgroup/<parent>.
    hierarchies = sorted(p.name for p in Path("/sys/fs/cgroup").iterdir() if p.is_dir())
    for controller in (*hierarchies, ""):
        remove_tree(test_host.cgroup_dir(controller))


# -- a routed test network (issue 4): a "LAN" namespace holding the network's gateway and its
# peer hosts, joined by a veth to the test host's uplink. Nothing outside these namespaces.

LAN_NETWORK = "198.51.100.0/24"
LAN_GATEWAY = "198.51.100.1"
HOST_LAN_IP = "198.51.100.2"
UPLINK = "up0"
# Peer hosts of the slides' firewall.conf, all addresses of the LAN namespace.
PEERS = {
    "monitoring": "198.51.100.5",  # Nagios, Munin
    "relay": "198.51.100.25",
    "dns": "198.51.100.53",
    "admin": "198.51.100.62",
    "adminnet": "203.0.113.7",
    "dns2": "203.0.113.53",
    "outsider": "198.18.0.9",
}
NETWORKS_CONF = f"0,{LAN_NETWORK},{LAN_GATEWAY},example.org,{PEERS['dns']}\n"


@dataclass
class Lan:
    """The LAN namespace: sends and serves with the static network probe."""

    netns: str
    probe: Path
    processes: list[subprocess.Popen[str]] = field(default_factory=list)

    def run(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*netns_prefix(self.netns), *argv],
            text=True,
            capture_output=True,
            timeout=timeout,
            check=False,
        )

    def connect(
        self, ip: str, port: int, *, src: str | None = None, proto: str = "tcp", ms: int = 5000
    ) -> str:
        """Connect from the LAN: "open", "refused" or "timeout". The LAN's first packet to a
        guest waits for the host's proxy ARP answer, which the kernel delays by up to
        proxy_delay (0.8 s) and which a loaded CI machine can push past 1.5 s (a flaky A6 at
        stop 21): an answer that must come gets 5 s; a test expecting silence passes ``ms``."""
        verb = "connect" if proto == "tcp" else "udp"
        result = self.run(str(self.probe), verb, ip, str(port), src or "-", str(ms))
        return result.stdout.strip()

    def listen(self, proto: str, port: int, address: str = "0.0.0.0") -> subprocess.Popen[str]:
        """Serve on ``address`` (a peer's address, so UDP answers come from it)."""
        process = subprocess.Popen(
            [*netns_prefix(self.netns), str(self.probe), "listen", proto, str(port), address],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.processes.append(process)
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "listening"
        return process

    def stop(self) -> None:
        for process in self.processes:
            process.kill()  # by the PID this test started
            process.wait()


def listening(init_pid: int, proto: str, port: int) -> bool:
    """Whether a guest listens on ``port``, read from its own /proc/PID/net (no exec)."""
    table = Path(f"/proc/{init_pid}/net/{proto}").read_text().splitlines()[1:]
    for line in table:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        if local_port == port and (proto == "udp" or fields[3] == "0A"):
            return True
    return False


def serve(test_host: Host, name: str, proto: str, port: int) -> None:
    """Start the network probe listening inside a guest, in the background, and wait for it."""
    test_host.exec(name, "sh", "-c", f"vstnet listen {proto} {port} >/dev/null 2>&1 &")
    state = test_host.state(name)
    assert state is not None
    init_pid = int(str(state["init_pid"]))
    deadline = time.monotonic() + 10
    while not listening(init_pid, proto, port):
        assert time.monotonic() < deadline, f"{name} does not listen on {proto}/{port}"
        time.sleep(0.02)


@contextlib.contextmanager
def wired_to_lan(
    host: Host, net_probe: Path, *, vlan: int = 0, create_conf: str = ""
) -> Iterator[Lan]:
    """Wire the test host to a LAN namespace: uplink up0 (198.51.100.2 on VLAN 0) by a veth to
    lan0, where the LAN holds the gateway 198.51.100.1 and the peers, untagged or on its own
    lan0.VLAN; networks.conf has the network on ``vlan``. The guests are stopped before the
    LAN goes."""
    host.net_probe = net_probe
    etc = Path(host.env["VS_ETC_DIR"])
    settings = etc / "vs-tools.conf"
    settings.write_text(settings.read_text().replace("NETWORK=none", "NETWORK=routed"))
    (etc / "networks.conf").write_text(NETWORKS_CONF.replace("0,", f"{vlan},", 1))
    (etc / "create.conf").write_text(f"DEFAULT_DEVICE={UPLINK}\n{create_conf}")
    lan_ns = f"{host.cgroup_parent}-lan"
    with named_netns(lan_ns):

        def ip(netns: str, *argv: str) -> None:
            subprocess.run(["ip", "-n", netns, *argv], check=True, capture_output=True)

        ip(host.netns, "link", "add", UPLINK, "type", "veth", "peer", "name", "lan0", "netns",
           lan_ns)  # fmt: skip
        links = {host.netns: ["lo", UPLINK], lan_ns: ["lo", "lan0"]}
        lan_link = "lan0"
        if vlan:
            lan_link = f"lan0.{vlan}"
            ip(lan_ns, "link", "add", "link", "lan0", "name", lan_link, "type", "vlan", "id",
               str(vlan))  # fmt: skip
            links[lan_ns].append(lan_link)
        else:
            ip(host.netns, "addr", "add", f"{HOST_LAN_IP}/24", "dev", UPLINK)
        ip(lan_ns, "addr", "add", f"{LAN_GATEWAY}/24", "dev", lan_link)
        for address in PEERS.values():
            ip(lan_ns, "addr", "add", f"{address}/32", "dev", lan_link)
        for netns, names in links.items():
            for link in names:
                ip(netns, "link", "set", link, "up")
        lan = Lan(lan_ns, net_probe)
        try:
            yield lan
        finally:
            lan.stop()
            _teardown(host)


@pytest.fixture
def routed(host: Host, net_probe_binary: Path) -> Iterator[tuple[Host, Lan]]:
    """The test host wired to a LAN, its network on VLAN 0 (see ``wired_to_lan``)."""
    with wired_to_lan(host, net_probe_binary) as lan:
        yield host, lan


# -- btrfs on a loop device (STORAGE=btrfs): a sparse image named with the run prefix, its
# loop device, the file system mounted at a directory named with the prefix too, quotas on.
# The loop device is detached and the image removed also when the test fails.


@pytest.fixture
def btrfs_fs(tmp_path: Path, run_prefix: str) -> Iterator[Path]:
    """A fresh btrfs (quotas enabled) mounted for this test."""
    with btrfs_loop(tmp_path, run_prefix) as mountpoint:
        yield mountpoint


@pytest.fixture
def btrfs_host(btrfs_fs: Path, host: Host) -> Host:
    """The test host with its root filesystems (VS_ROOT_DIR) on ``btrfs_fs``. Set up after the
    file system and so torn down before it: the guests are stopped before it is unmounted."""
    root = btrfs_fs / "vservers"
    root.mkdir()
    host.env["VS_ROOT_DIR"] = str(root)
    return host
