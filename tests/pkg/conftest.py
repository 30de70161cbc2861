"""Fixtures of vs-pkg's tests: a real Debian guest (debootstrap, once per session, or the
tarball VS_DEBIAN_TEMPLATE names) on the routed test network, its firewall.conf ``enable`` with
no rule at all, its sources naming only a mirror the test builds and serves from the LAN
namespace under a name only the command under test resolves (a hosts file bind-mounted in its
own mount namespace)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.pkgmirror import Mirror, start_mirror
from tests.guests import BIN, Host, Lan, netns_prefix, wired_to_lan

MIRROR_NAME = "deb.vstmirror.test"
MIRROR_IP = "198.51.100.80"
GUEST = "deb"
GUEST_IP = "198.51.100.30"
PACKAGES = {"vsthello": "1.0", "vstdep": "1.0", "vstother": "2.0"}


@pytest.fixture(scope="session")
def debian_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bookworm minbase root as a tarball: VS_DEBIAN_TEMPLATE, else debootstrapped once."""
    given = os.environ.get("VS_DEBIAN_TEMPLATE")
    if given:
        return Path(given)
    if os.environ.get("VS_SKIP_DEBOOTSTRAP"):
        pytest.skip("VS_SKIP_DEBOOTSTRAP is set and VS_DEBIAN_TEMPLATE is not")
    work = tmp_path_factory.mktemp("debian")
    subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            "bookworm",
            str(work / "root"),
            "http://deb.debian.org/debian",
        ],
        check=True,
        capture_output=True,
        timeout=1800,
    )
    tarball = work / "bookworm.tar"
    subprocess.run(["tar", "-C", str(work / "root"), "-cf", str(tarball), "."], check=True)
    return tarball


@dataclass
class PkgEnv:
    """The test host, its LAN, the mirror, the Debian guest and the hosts file."""

    host: Host
    lan: Lan
    mirror: Mirror
    hosts_file: Path

    def pkg(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run vs-pkg as an administrator would, in the test host's network namespace, with the
        mirror's name resolvable (its own mount namespace: the machine's /etc/hosts is never
        touched)."""
        result = subprocess.run(
            self.pkg_argv(*args),
            env=self.host.env,
            text=True,
            capture_output=True,
            input="",
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"vs-pkg {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout}{result.stderr}"
            )
        return result

    def pkg_argv(self, *args: str) -> list[str]:
        """The command line of ``pkg`` (for tests that start it in the background)."""
        return [
            *netns_prefix(self.host.netns),
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            'mount --bind "$0" /etc/hosts && exec "$@"',
            str(self.hosts_file),
            str(BIN / "vs-pkg"),
            *args,
        ]

    def ruleset(self) -> str:
        """The test host's whole nftables ruleset as listed (what H6 compares)."""
        return subprocess.run(
            [*netns_prefix(self.host.netns), "nft", "list", "ruleset"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    def add_debian(self, name: str, ip: str) -> None:
        """Another running Debian guest like the first: firewall ``enable``, the same mirror."""
        add_debian(self.host, name, ip, self.mirror)

    def rootfs(self) -> Path:
        return self.host.rootfs(GUEST)

    def installed(self, package: str) -> str:
        """The version of ``package`` installed in the guest, "" when it is not."""
        out = self.host.exec(
            GUEST, "dpkg-query", "-W", "-f=${db:Status-Abbrev}${Version}", package, check=False
        )
        return out[3:] if out.startswith("ii ") else ""


def write_sources(rootfs: Path, line: str, ca: Path) -> None:
    """Replace the guest's sources with ``line`` and trust the throwaway CA for apt (the guest
    administrator's own configuration: vs-pkg never writes these)."""
    (rootfs / "etc" / "apt" / "sources.list").write_text(line + "\n")
    (rootfs / "etc" / "vst-ca.pem").write_bytes(ca.read_bytes())
    (rootfs / "etc" / "apt" / "apt.conf.d" / "99vst-ca").write_text(
        'Acquire::https::CaInfo "/etc/vst-ca.pem";\n'
    )


def add_debian(host: Host, name: str, ip: str, mirror: Mirror) -> None:
    """A running Debian guest whose firewall.conf says ``enable`` and nothing else, its sources
    naming the test's mirror only."""
    host.run("vs-create", "--name", name, "--interface", ip, timeout=300)
    host.guests.append(name)
    (host.guests_dir / name / "firewall.conf").write_text("enable\n")
    write_sources(host.rootfs(name), f"deb [trusted=yes] http://{MIRROR_NAME}/ vst main", mirror.ca)
    host.run("vs-control", "--name", name, "--start")


@contextlib.contextmanager
def _pkg_env(
    host: Host, net_probe: Path, template: Path, tmp_path: Path, create_extra: str = ""
) -> Iterator[PkgEnv]:
    create = f'DEFAULT_TEMPLATE={template}\nDEFAULT_INIT="/usr/bin/sleep infinity"\n{create_extra}'
    with wired_to_lan(host, net_probe, create_conf=create) as lan:
        subprocess.run(
            ["ip", "-n", lan.netns, "addr", "add", f"{MIRROR_IP}/32", "dev", "lan0"], check=True
        )
        mirror = start_mirror(
            netns_prefix(lan.netns), tmp_path / "mirror", MIRROR_NAME, MIRROR_IP, PACKAGES
        )
        try:
            hosts = tmp_path / "hosts"
            hosts.write_text(f"127.0.0.1 localhost\n{MIRROR_IP} {MIRROR_NAME}\n")
            add_debian(host, GUEST, GUEST_IP, mirror)
            yield PkgEnv(host, lan, mirror, hosts)
        finally:
            mirror.stop()


@pytest.fixture
def pkg_env(
    host: Host, net_probe_binary: Path, debian_template: Path, tmp_path: Path
) -> Iterator[PkgEnv]:
    """A running Debian guest behind a firewall that says only ``enable``, and its mirror."""
    with _pkg_env(host, net_probe_binary, debian_template, tmp_path) as env:
        yield env


@pytest.fixture
def pkg_env_btrfs(
    btrfs_host: Host, net_probe_binary: Path, debian_template: Path, tmp_path: Path
) -> Iterator[PkgEnv]:
    """The same with the guest's root on btrfs (STORAGE=btrfs), where vs-pkg takes snapshots."""
    with _pkg_env(
        btrfs_host, net_probe_binary, debian_template, tmp_path, "STORAGE=btrfs\n"
    ) as env:
        yield env
