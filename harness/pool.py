"""Hosts for the pool, for the tests and the benchmarks (TESTING.md "Test hosts for the pool"):
a master and slaves, each a network namespace on one bridge (itself in a namespace of its own)
running its own sshd (throwaway host keys, its own authorized_keys) in a mount namespace of its
own, where the toolkit's default paths are the host's own directories: /etc is an overlay whose
upper layer is the host's (so /etc/hosts and /etc/vs-tools are its own), /etc/vs-tools,
/etc/vservers, /var/lib/vservers and /var/lib/vs-tools are bind mounts of per-host directories,
/run a tmpfs. So the slave side runs with its defaults, exactly as on a real host, and nothing
of the machine is touched. ``pool_up`` builds them (well under a second each) and removes them,
also on failure."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.cgroups import remove_tree
from vstools.guest.templates import write_busybox_template

BIN = Path(sys.executable).parent
POOL_NETWORK = "198.18.0.0/24"
SLAVES = ("vsh-01", "vsh-02", "vsh-03")
MASTER = "vsm"


def slave_names(count: int) -> tuple[str, ...]:
    """``vsh-01`` ... for ``count`` slaves (at most 200: one /24)."""
    return tuple(f"vsh-{index:02d}" for index in range(1, count + 1))


def address_of(name: str) -> str:
    """The test address of a pool host: the master .10, slave vsh-NN .10+NN."""
    return "198.18.0.10" if name == MASTER else f"198.18.0.{10 + int(name.rsplit('-', 1)[1])}"


ADDRESSES = {name: address_of(name) for name in (MASTER, *SLAVES)}
SESSION_PATH = f"{BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

SSHD_CONFIG = """\
ListenAddress {ip}
Port 22
HostKey {base}/ssh/host_ed25519
PidFile none
AuthorizedKeysFile {base}/ssh/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
LogLevel ERROR
ClientAliveInterval 5
ClientAliveCountMax 2
SetEnv PATH={path} VS_NO_SYSTEMD=1{setenv}
"""

# Run inside the host's new mount namespace (private propagation), then becomes its sshd.
MOUNTS = """\
set -e
b={base}
mount -t overlay overlay -o lowerdir=/etc,upperdir=$b/etc-up,workdir=$b/etc-work /etc
mkdir -p /etc/vs-tools /etc/vservers
mount --bind $b/etc /etc/vs-tools
mount --bind $b/guests /etc/vservers
mount -t overlay overlay -o lowerdir=/var/lib,upperdir=$b/lib-up,workdir=$b/lib-work /var/lib
mkdir -p /var/lib/vservers /var/lib/vs-tools
mount --bind $b/roots /var/lib/vservers
mount --bind $b/state /var/lib/vs-tools
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/sshd /run/vs-tools
cat $b/hosts >> /etc/hosts
exec /usr/sbin/sshd -D -e -f $b/ssh/sshd_config
"""


@dataclass
class PoolHost:
    """One host of the test pool: its namespaces, its directories, its sshd."""

    name: str
    ip: str
    netns: str
    base: Path
    cgroup_parent: str
    sshd: subprocess.Popen[bytes] | None = None
    setenv: dict[str, str] = field(default_factory=dict)  # sshd's SetEnv beyond PATH

    @property
    def pid(self) -> int:
        assert self.sshd is not None
        return self.sshd.pid

    def inside(self, path: str) -> Path:
        """A path as this host sees it (its mount namespace), read from the test process."""
        return Path(f"/proc/{self.pid}/root") / path.lstrip("/")

    def run(
        self,
        *argv: str,
        check: bool = True,
        input: str | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command on this host as its sshd's sessions do: its namespaces, default paths,
        the session's PATH (the vs-* commands)."""
        env = {"PATH": SESSION_PATH, "VS_NO_SYSTEMD": "1", "HOME": "/root", "LANG": "C.UTF-8",
               **self.setenv}  # fmt: skip
        result = subprocess.run(
            ["nsenter", f"--target={self.pid}", "--mount", "--net", "--", *argv],
            env=env,
            text=True,
            capture_output=True,
            input=input if input is not None else "",
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{self.name}: {' '.join(argv)} exited {result.returncode}:\n"
                f"{result.stdout}{result.stderr}"
            )
        return result

    def guests(self) -> list[str]:
        return sorted(p.name for p in (self.base / "guests").iterdir() if p.is_dir())

    def state(self, name: str) -> dict[str, object] | None:
        try:
            data: dict[str, object] = json.loads(
                self.inside(f"/run/vs-tools/guests/{name}/state.json").read_text()
            )
        except FileNotFoundError:
            return None
        return data


@dataclass
class Pool:
    """The master and its slaves."""

    master: PoolHost
    slaves: dict[str, PoolHost]
    bridge_ns: str
    template: Path  # the busybox template, in every host's /var/lib/vs-tools
    hosts: list[PoolHost] = field(default_factory=list)
    configs: dict[Path, str] = field(default_factory=dict)  # each host's etc, as set up

    def slave(self, name: str) -> PoolHost:
        return self.slaves[name]


def _ip(netns: str, *argv: str) -> None:
    subprocess.run(["ip", "-n", netns, *argv], check=True, capture_output=True)


def _keygen(path: Path) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return (path.parent / f"{path.name}.pub").read_text().strip()


def _make_host(
    name: str,
    index: int,
    top: Path,
    prefix: str,
    *,
    bridge_ns: str,
    hosts_lines: str,
    setenv: Mapping[str, str],
    stop_timeout_s: int,
) -> PoolHost:
    base = top / name
    for sub in ("etc", "guests", "roots", "state", "ssh", "etc-up", "etc-work", "lib-up",
                "lib-work"):  # fmt: skip
        (base / sub).mkdir(parents=True)
    host = PoolHost(name, address_of(name), f"{prefix}-{name}", base, f"{prefix}-{name}",
                    setenv=dict(setenv))  # fmt: skip
    subprocess.run(["ip", "netns", "add", host.netns], check=True, capture_output=True)
    _ip(bridge_ns, "link", "add", f"p{index}", "type", "veth", "peer", "name", "eth0", "netns",
        host.netns)  # fmt: skip
    _ip(bridge_ns, "link", "set", f"p{index}", "master", "br0", "up")
    _ip(host.netns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
    _ip(host.netns, "link", "set", "lo", "up")
    _ip(host.netns, "link", "set", "eth0", "up")
    _keygen(base / "ssh" / "host_ed25519")
    (base / "ssh" / "authorized_keys").write_text("")
    extra = "".join(f" {key}={value}" for key, value in setenv.items())
    (base / "ssh" / "sshd_config").write_text(
        SSHD_CONFIG.format(ip=host.ip, base=base, path=SESSION_PATH, setenv=extra)
    )
    (base / "hosts").write_text(hosts_lines)
    (base / "etc" / "vs-tools.conf").write_text(
        f"HOSTNAME={name}\nCGROUP_PARENT={host.cgroup_parent}\nSTOP_TIMEOUT={stop_timeout_s}\n"
        "NETWORK=none\n"
        f"SSH_AUTHORIZED_KEYS={base}/ssh/authorized_keys\n"
    )
    return host


def _start_sshd(host: PoolHost) -> None:
    host.sshd = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{host.netns}", "--", "unshare", "--mount",
         "--propagation", "private", "--", "sh", "-c", MOUNTS.format(base=host.base)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=open(host.base / "sshd.log", "wb"),  # noqa: SIM115 - the child keeps it
    )  # fmt: skip


def _wait_listening(host: PoolHost, timeout_s: float = 60) -> None:
    # Natively an sshd listens within a second; in the VM lab (TCG), four starting at once
    # take over 10 s. A dead one is seen at once, so the bound costs only a hung start.
    deadline = time.monotonic() + timeout_s
    while True:
        result = subprocess.run(
            ["ip", "netns", "exec", host.netns, "ss", "-Htln", "sport = :22"],
            capture_output=True,
            text=True,
            check=False,
        )
        if host.ip in result.stdout:
            return
        if host.sshd is not None and host.sshd.poll() is not None:
            raise AssertionError(f"{host.name}'s sshd died: {(host.base / 'sshd.log').read_text()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{host.name}'s sshd does not listen")
        time.sleep(0.02)


def kill_netns_processes(netns: str) -> None:
    """SIGKILL, by PID, every process left in the test host's network namespace: its sshd's
    sessions and the master's ssh connection masters (ControlPersist). Once the bridge is
    gone, they would wait for a peer that can no longer answer."""
    listed = subprocess.run(
        ["ip", "netns", "pids", netns], capture_output=True, text=True, check=False
    ).stdout.split()
    for pid in listed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


def stop_guests(host: PoolHost) -> None:
    """Stop every guest of ``host`` by its supervisor's PID, then remove their cgroups."""
    for name in host.guests():
        state = host.state(name)
        if state is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(str(state["supervisor_pid"])), signal.SIGTERM)
    deadline = time.monotonic() + 15
    while any(host.state(n) for n in host.guests()) and time.monotonic() < deadline:
        time.sleep(0.05)
    # Each v1 hierarchy, and the one tree of a cgroup v2 host (the VM lab): /sys/fs/cgroup/<parent>.
    for hierarchy in (Path("/sys/fs/cgroup"), *Path("/sys/fs/cgroup").iterdir()):
        remove_tree(hierarchy / host.cgroup_parent)


def wipe(host: PoolHost) -> None:
    """Take every guest off ``host`` (stopped first) and everything the pool left there."""
    stop_guests(host)
    for sub in ("guests", "roots"):
        for entry in (host.base / sub).iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    for leftover in ("pool", "monitor", "context.next"):
        target = host.base / "state" / leftover
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


@contextlib.contextmanager
def pool_up(
    top: Path,
    run_prefix: str,
    slaves: Sequence[str] = SLAVES,
    *,
    setenv: Mapping[str, str] | None = None,
    stop_timeout_s: int = 5,
) -> Iterator[Pool]:
    """The master and ``slaves`` under ``top``, named after ``run_prefix`` (``vst``...);
    ``setenv``: more variables for every session on them (sshd's SetEnv, and ``PoolHost.run``);
    ``stop_timeout_s``: their STOP_TIMEOUT.
    Everything removed when the block ends, also on failure."""
    bridge_ns = f"{run_prefix}-pbr"
    subprocess.run(["ip", "netns", "add", bridge_ns], check=True, capture_output=True)
    made: list[PoolHost] = []
    try:
        _ip(bridge_ns, "link", "add", "br0", "type", "bridge")
        _ip(bridge_ns, "link", "set", "br0", "up")
        hosts_lines = "".join(f"{address_of(n)} {n}\n" for n in (MASTER, *slaves))
        for index, name in enumerate((MASTER, *slaves)):
            made.append(_make_host(name, index, top, run_prefix, bridge_ns=bridge_ns,
                                   hosts_lines=hosts_lines, setenv=setenv or {},
                                   stop_timeout_s=stop_timeout_s))  # fmt: skip
        master = made[0]
        master_key = _keygen(master.base / "etc" / "pool_key")
        known = []
        for host in made:
            (host.base / "ssh" / "authorized_keys").write_text(master_key + "\n")
            public = (host.base / "ssh" / "host_ed25519.pub").read_text().split()
            known.append(f"{host.name},{host.ip} {public[0]} {public[1]}\n")
        (master.base / "etc" / "known_hosts").write_text("".join(known))
        with open(master.base / "etc" / "vs-tools.conf", "a") as conf:
            conf.write(
                "SSH_KEY=/etc/vs-tools/pool_key\nSSH_KNOWN_HOSTS=/etc/vs-tools/known_hosts\n"
            )
        (master.base / "etc" / "slaves.conf").write_text("".join(f"{s}\n" for s in slaves))
        template = top / "busybox.tar.gz"
        write_busybox_template(template)
        for host in made:
            shutil.copy2(template, host.base / "state" / "busybox.tar.gz")
            (host.base / "etc" / "create.conf").write_text(
                "DEFAULT_TEMPLATE=/var/lib/vs-tools/busybox.tar.gz\nCONTEXT_METHOD=cnt\n"
            )
            _start_sshd(host)
        for host in made:
            _wait_listening(host)
        pool = Pool(master, {h.name: h for h in made[1:]}, bridge_ns, template, made)
        pool.configs = {
            path: path.read_text()
            for host in made
            for path in (host.base / "etc").iterdir()
            if path.suffix == ".conf"
        }
        yield pool
    finally:
        for host in made:
            with contextlib.suppress(Exception):
                stop_guests(host)
            if host.sshd is not None:
                host.sshd.terminate()  # by the PID this session started
                with contextlib.suppress(subprocess.TimeoutExpired):
                    host.sshd.wait(timeout=10)
            kill_netns_processes(host.netns)
            subprocess.run(["ip", "netns", "del", host.netns], check=False, capture_output=True)
        subprocess.run(["ip", "netns", "del", bridge_ns], check=False, capture_output=True)


@contextlib.contextmanager
def on_btrfs(host: PoolHost, image: Path) -> Iterator[PoolHost]:
    """``host`` with STORAGE=btrfs: a 1 GiB btrfs on a loop device over its /var/lib/vservers."""
    with open(image, "wb") as handle:
        handle.truncate(1 << 30)
    device = subprocess.run(["losetup", "--find", "--show", str(image)], check=True,
                            capture_output=True, text=True).stdout.strip()  # fmt: skip
    create = host.base / "etc" / "create.conf"
    before = create.read_text() if create.exists() else None
    try:
        subprocess.run(["mkfs.btrfs", "-q", device], check=True, capture_output=True)
        host.run("mount", device, "/var/lib/vservers")
        try:
            host.run("btrfs", "quota", "enable", "/var/lib/vservers")
            with open(create, "a") as handle:
                handle.write("STORAGE=btrfs\n")
            yield host
        finally:
            stop_guests(host)
            if host.run("umount", "/var/lib/vservers", check=False).returncode != 0:
                host.run("umount", "--lazy", "/var/lib/vservers", check=False)
            if before is not None:
                create.write_text(before)
    finally:
        subprocess.run(["losetup", "--detach", device], check=False)
        image.unlink()


@contextlib.contextmanager
def on_lvm(host: PoolHost, image: Path, vg: str, *, size_mb: int = 256) -> Iterator[PoolHost]:
    """``host`` with STORAGE=lvm: a volume group ``vg`` of its own on a loop device of a sparse
    ``image`` of ``size_mb``, ext4 volumes, snapshots of 16 MB. Needs device-mapper (the VM
    lab) and, where no udev runs, DM_DISABLE_UDEV=1 in the host's sessions (pool_up's
    ``setenv``). The group, the loop device and the image are removed when the block ends,
    also on failure, after the host's guests are stopped and its volumes unmounted."""
    env = {**os.environ, **host.setenv}

    def lvm(*argv: str, check: bool = True) -> None:
        subprocess.run(argv, env=env, check=check, capture_output=True)

    with open(image, "wb") as handle:
        handle.truncate(size_mb << 20)
    device = subprocess.run(["losetup", "--find", "--show", str(image)], check=True,
                            capture_output=True, text=True).stdout.strip()  # fmt: skip
    create = host.base / "etc" / "create.conf"
    before = create.read_text() if create.exists() else None
    try:
        lvm("pvcreate", "-q", device)
        lvm("vgcreate", "-q", vg, device)
        with open(create, "a") as handle:
            handle.write(f"STORAGE=lvm\nLVM_VG={vg}\nLVM_FS=ext4\nSNAPSHOT_SIZE=16\n")
        yield host
    finally:
        stop_guests(host)
        # The volumes are mounted in the host's own mount namespace: unmounted there.
        mounted = host.run("findmnt", "-rn", "-o", "TARGET", check=False).stdout.split()
        for target in reversed(mounted):
            if target.startswith("/var/lib/vservers/"):
                host.run("umount", "--lazy", target, check=False)
        lvm("vgremove", "-ff", "-y", vg, check=False)
        lvm("pvremove", "-ff", "-y", device, check=False)
        subprocess.run(["losetup", "--detach", device], check=False)
        image.unlink()
        if before is not None:
            create.write_text(before)
