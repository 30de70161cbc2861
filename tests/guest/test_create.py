"""vs-create: from templates (tar, tar.gz, tar.zst), by cloning, by debootstrap; defaults from
create.conf and networks.conf; context numbers; refusals; and transactional rollback with a
failure injected at every step."""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from tests.guests import HOST_LAN_IP, PEERS, UPLINK, Host, Lan, netns_prefix
from vstools.config.create import ContextMethod, CreateConf
from vstools.config.networks import parse_networks
from vstools.errors import HostError, UsageError
from vstools.guest.create import CreateRequest, compute_context, plan_create
from vstools.host.hostconfig import HostConfig
from vstools.paths import resolve_paths
from vstools.plan import apply_steps

NETWORKS = "1,198.51.100.0/24,198.51.100.1,example.org,203.0.113.53\n2,203.0.113.0/24,203.0.113.1\n"


def test_context_methods() -> None:
    ip = IPv4Address("198.51.100.42")
    assert compute_context(ContextMethod.DEC, ip, 3, 0) == 3042
    assert compute_context(ContextMethod.HEX, ip, 3, 0) == (100 << 8) + 42
    assert compute_context(ContextMethod.CNT, ip, 3, 10007) == 10007
    with pytest.raises(UsageError):
        compute_context(ContextMethod.HEX, IPv4Address("198.19.0.0"), 0, 0)


@pytest.fixture
def tarballs(host: Host) -> dict[str, Path]:
    out = {}
    for suffix, flag in ((".tar", []), (".tar.gz", ["-z"]), (".tar.zst", ["--zstd"])):
        target = host.root / f"busybox{suffix}"
        subprocess.run(
            ["tar", "--numeric-owner", *flag, "-cf", str(target), "-C", str(host.template), "."],
            check=True,
        )
        out[suffix] = target
    return out


def _configure(host: Host, create_conf: str = "") -> None:
    etc = Path(host.env["VS_ETC_DIR"])
    (etc / "networks.conf").write_text(NETWORKS)
    (etc / "create.conf").write_text(create_conf)
    (etc / "firewall.conf").write_text("enable\nallow from 0/0 to tcp/22\n")
    (etc / "monitor.conf").write_text("MONITOR_MAILTO=root\n")


pytestmark = [pytest.mark.privileged]


@pytest.mark.e2e
@pytest.mark.parametrize("suffix", [".tar", ".tar.gz", ".tar.zst"])
def test_create_from_a_template_with_two_arguments(
    host: Host, tarballs: dict[str, Path], suffix: str
) -> None:
    _configure(
        host, f"DEFAULT_TEMPLATE={tarballs[suffix]}\nDEFAULT_RSS_LIMIT=48\nCONTEXT_METHOD=dec\n"
    )
    out = host.run("vs-create", "--name", "web", "--interface", "198.51.100.10").stdout
    summary = dict(line.split(":", 1) for line in out.splitlines())
    assert summary["context"] == "1010" and summary["vlan"] == "1"
    assert summary["domain"] == "example.org" and summary["nameserver"] == "203.0.113.53"
    assert summary["rss"] == "48" and summary["method"] == "template"
    host.guests.append("web")
    root = host.rootfs("web")
    assert (root / "etc" / "hostname").read_text() == "web\n"
    assert (root / "etc" / "resolv.conf").read_text() == (
        "search example.org\nnameserver 203.0.113.53\n"
    )
    assert (host.guests_dir / "web" / "firewall.conf").read_text().startswith("enable")
    assert host.run("vs-check").returncode == 0
    host.run("vs-control", "--name", "web", "--start")
    assert host.exec("web", "hostname") == "web\n"


@pytest.mark.e2e
def test_command_line_beats_networks_beats_create_conf(
    host: Host, tarballs: dict[str, Path]
) -> None:
    _configure(
        host,
        f"DEFAULT_TEMPLATE={tarballs['.tar']}\nDEFAULT_DOMAIN=default.test\n"
        "DEFAULT_NAMESERVER=198.51.100.53\nCONTEXT_METHOD=cnt\nCONTEXT_START=500\n",
    )
    first = json.loads(
        host.run("vs-create", "--json", "--name", "a", "--interface", "203.0.113.5").stdout
    )
    assert first["domain"] == "default.test" and first["nameserver"] == "198.51.100.53"
    assert first["context"] == 500
    second = json.loads(
        host.run(
            "vs-create",
            "--json",
            "--name",
            "b",
            "--interface",
            "203.0.113.6",
            "--domain",
            "cli.test",
            "--rss",
            "99",
            "--cpu",
            "1/3",
            "--enable",
        ).stdout
    )
    assert second["domain"] == "cli.test" and second["context"] == 501
    assert (second["rss"], second["cpu"], second["enabled"]) == (99, "1/3", "yes")
    host.guests += ["a", "b"]


@pytest.mark.e2e
def test_refusals_change_nothing(host: Host, tarballs: dict[str, Path]) -> None:
    _configure(host, f"DEFAULT_TEMPLATE={tarballs['.tar']}\n")
    host.run("vs-create", "--name", "web", "--interface", "198.51.100.10")
    host.guests.append("web")
    before = sorted(str(p) for p in host.root.rglob("*") if "guests" in str(p))
    cases = [
        (["--name", "web", "--interface", "198.51.100.11"], 4, "already exists"),
        (["--name", "db", "--interface", "198.51.100.10"], 4, "already the address of guest web"),
        (["--name", "db", "--interface", "198.18.0.9"], 2, "in no network"),
        (["--name", "db", "--interface", "198.51.100.1"], 2, "gateway"),
        (["--name=-rf", "--interface", "198.51.100.12"], 2, "invalid guest name"),
        (
            ["--name", "db", "--interface", "198.51.100.12", "--template", "/nonexistent"],
            3,
            "does not exist",
        ),
    ]
    for argv, code, words in cases:
        result = host.run("vs-create", *argv, check=False)
        assert (result.returncode, words in result.stderr) == (code, True), result.stderr
    assert sorted(str(p) for p in host.root.rglob("*") if "guests" in str(p)) == before
    assert not host.rootfs("db").exists()


@pytest.mark.e2e
def test_clone_needs_a_stopped_source(host: Host, tarballs: dict[str, Path]) -> None:
    _configure(host, f"DEFAULT_TEMPLATE={tarballs['.tar.gz']}\n")
    host.run("vs-create", "--name", "web", "--interface", "198.51.100.10")
    host.guests.append("web")
    (host.rootfs("web") / "root" / "data").write_text("from web")
    host.run("vs-control", "--name", "web", "--start")
    refused = host.run(
        "vs-create", "--name", "copy", "--interface", "198.51.100.11", "--clone", "web", check=False
    )
    assert refused.returncode == 4 and "running" in refused.stderr
    host.run("vs-control", "--name", "web", "--stop")
    host.run("vs-create", "--name", "copy", "--interface", "198.51.100.11", "--clone", "web")
    host.guests.append("copy")
    assert (host.rootfs("copy") / "root" / "data").read_text() == "from web"
    assert (host.rootfs("copy") / "etc" / "hostname").read_text() == "copy\n"


@pytest.mark.parametrize(
    ("storage", "clone", "count"),
    [("dir", False, 8), ("dir", True, 8), ("btrfs", False, 9), ("btrfs", True, 8)],
)
def test_a_failure_at_any_step_leaves_nothing(
    request: pytest.FixtureRequest,
    tarballs: dict[str, Path],
    storage: str,
    clone: bool,
    count: int,
) -> None:
    """Each step fails in turn (dir: directories; btrfs: subvolume, qgroup limit; from the
    template or cloned from another guest, a btrfs snapshot then): nothing is left."""
    host: Host = request.getfixturevalue("btrfs_host" if storage == "btrfs" else "host")
    _configure(
        host, f"DEFAULT_TEMPLATE={tarballs['.tar']}\nCONTEXT_METHOD=cnt\nSTORAGE={storage}\n"
    )
    if clone:
        host.run("vs-create", "--name", "origin", "--interface", "198.51.100.9")
        host.guests.append("origin")
    paths = resolve_paths(host.env)
    defaults = CreateConf.parse("c", Path(host.env["VS_ETC_DIR"], "create.conf").read_text())
    networks = parse_networks("n", NETWORKS)
    hostconf = HostConfig.given(paths, create=defaults, networks=networks)
    # This process runs in the machine's own network namespace: never probe from it.
    request_ = CreateRequest(
        name="web", ip=IPv4Address("198.51.100.10"), clone="origin" if clone else None
    )
    assert len(plan_create(hostconf, request_, probe_network=False).steps) == count
    snapshot = sorted(str(p) for p in host.root.rglob("*"))
    subvolumes = _btrfs_subvolumes(paths.root_dir) if storage == "btrfs" else []
    for failing in range(count):
        plan = plan_create(hostconf, request_, probe_network=False)

        def boom() -> None:
            raise OSError(28, "No space left on device")

        steps = [
            replace(step, apply=boom) if index == failing else step
            for index, step in enumerate(plan.steps)
        ]
        with pytest.raises(HostError, match="No space left on device"):
            apply_steps(steps)
        assert sorted(str(p) for p in host.root.rglob("*")) == snapshot, failing
        if storage == "btrfs":
            assert _btrfs_subvolumes(paths.root_dir) == subvolumes, failing
    apply_steps(plan_create(hostconf, request_, probe_network=False).steps)  # and it still works
    host.guests.append("web")


def _btrfs_subvolumes(root: Path) -> list[str]:
    listed = subprocess.run(
        ["btrfs", "subvolume", "list", str(root)], check=True, capture_output=True, text=True
    )
    return sorted(line.split()[-1] for line in listed.stdout.splitlines())


def test_h1_h2_template_symlinks_never_make_the_host_write_outside(
    host: Host, tmp_path: Path
) -> None:
    evil = tmp_path / "evil"
    subprocess.run(["cp", "-a", str(host.template), str(evil)], check=True)
    sentinel = tmp_path / "shadow"
    sentinel.write_text("host secret\n")
    for name in ("hostname", "resolv.conf"):
        (evil / "etc" / name).unlink(missing_ok=True)
    (evil / "etc" / "hostname").symlink_to(sentinel)
    (evil / "etc" / "resolv.conf").symlink_to("../../../../../../../../" + str(tmp_path)[1:] + "/x")
    tarball = tmp_path / "evil.tar"
    subprocess.run(["tar", "-cf", str(tarball), "-C", str(evil), "."], check=True)
    _configure(host, f"DEFAULT_TEMPLATE={tarball}\n")
    host.run("vs-create", "--name", "web", "--interface", "198.51.100.10")
    host.guests.append("web")
    assert sentinel.read_text() == "host secret\n"
    assert not (tmp_path / "x").exists()
    hostname = host.rootfs("web") / "etc" / "hostname"
    assert not hostname.is_symlink() and hostname.read_text() == "web\n"


@pytest.mark.e2e
def test_a_real_debian_guest_by_debootstrap(host: Host) -> None:
    if os.environ.get("VS_SKIP_DEBOOTSTRAP"):
        pytest.skip("VS_SKIP_DEBOOTSTRAP is set")
    _configure(host, 'DEFAULT_INIT="/usr/bin/sleep infinity"\n')
    created = host.run(
        "vs-create",
        "--name",
        "deb",
        "--interface",
        "198.51.100.30",
        "--debootstrap",
        "bookworm",
        timeout=1800,
        # debootstrap downloads; vs-create changes no network, and with the host fixture's
        # NETWORK=none it sends no ARP probe on the machine's network either.
        machine_network=True,
    )
    host.guests.append("deb")
    assert "method:debootstrap" in created.stdout
    host.run("vs-control", "--name", "deb", "--start")
    assert host.exec("deb", "cat", "/etc/debian_version").startswith("12.")
    assert "ID=debian" in host.exec("deb", "cat", "/etc/os-release")
    # The guest's own package manager runs inside it, as its root.
    assert host.exec("deb", "dpkg-query", "-W", "-f=${Package}\\n", "dpkg") == "dpkg\n"


def test_create_conf_default_init_reaches_guest_conf(host: Host, tarballs: dict[str, Path]) -> None:
    _configure(host, f'DEFAULT_TEMPLATE={tarballs[".tar"]}\nDEFAULT_INIT="/bin/sleep 1000"\n')
    host.run("vs-create", "--name", "web", "--interface", "198.51.100.10")
    host.guests.append("web")
    assert 'INIT="/bin/sleep 1000"' in (host.guests_dir / "web" / "guest.conf").read_text()
    host.run("vs-control", "--name", "web", "--start")
    assert Path(f"/proc/{host.state('web')['init_pid']}/cmdline").read_bytes() == (  # type: ignore[index]
        b"/bin/sleep\x001000\x00"
    )


@pytest.mark.e2e
def test_default_userns_reaches_guest_conf_and_needs_a_small_context(
    host: Host, tarballs: dict[str, Path]
) -> None:
    _configure(host, f"DEFAULT_TEMPLATE={tarballs['.tar']}\nDEFAULT_USERNS=yes\n")
    host.run("vs-create", "--name", "web", "--interface", "198.51.100.10", "--context", "7")
    host.guests.append("web")
    assert "USERNS=yes" in (host.guests_dir / "web" / "guest.conf").read_text()
    host.run("vs-control", "--name", "web", "--start")
    assert host.exec("web", "id", "-u").strip() == "0"
    stats = host.run("vs-stats", "--name", "web").stdout.splitlines()
    assert f"userns:{7 * 65536}-{8 * 65536 - 1}" in stats
    host.run("vs-control", "--name", "web", "--stop")
    big = host.run(
        "vs-create",
        "--name",
        "db",
        "--interface",
        "198.51.100.11",
        "--context",
        "40000",
        check=False,
    )
    assert big.returncode == 2 and "DEFAULT_USERNS=yes in create.conf" in big.stderr
    assert not (host.guests_dir / "db").exists() and not host.rootfs("db").exists()


# -- the address must be free on the host and on its network (DESIGN §4) -----------------------


def _tree(host: Host) -> list[str]:
    return sorted(str(p) for p in host.root.rglob("*") if "guests" in str(p))


@pytest.mark.e2e
def test_an_address_in_use_on_the_network_is_refused(
    routed: tuple[Host, Lan], tarballs: dict[str, Path]
) -> None:
    """The LAN namespace plays the guest's network: a peer holding an address, another host
    answering for a guest of its own by proxy ARP; the probes never leave the test's
    namespaces."""
    host, lan = routed
    etc = Path(host.env["VS_ETC_DIR"])
    (etc / "create.conf").write_text(
        f"DEFAULT_DEVICE={UPLINK}\nDEFAULT_TEMPLATE={tarballs['.tar']}\n"
    )
    # Another host of the pool with a guest at .77: proxy ARP on its uplink, the guest routed
    # away from it (here to its loopback; the kernel answers proxy ARP only when forwarding).
    assert lan.run("sysctl", "-qw", "net.ipv4.ip_forward=1").returncode == 0
    for argv in (["neigh", "add", "proxy", "198.51.100.77", "dev", "lan0"],
                 ["route", "add", "198.51.100.77/32", "dev", "lo"]):  # fmt: skip
        subprocess.run(["ip", "-n", lan.netns, *argv], check=True)
    before = _tree(host)
    for ip, words in (
        (PEERS["monitoring"], f"{PEERS['monitoring']} answers ARP on {UPLINK} from "),
        ("198.51.100.77", f"198.51.100.77 answers ARP on {UPLINK} from "),
        (HOST_LAN_IP, f"{HOST_LAN_IP} is already configured on {UPLINK} of this host"),
    ):
        for dry in ([], ["--dry-run"]):
            result = host.run("vs-create", *dry, "--name", "db", "--interface", ip, check=False)
            assert (result.returncode, words in result.stderr) == (4, True), result.stderr
    assert _tree(host) == before and not host.rootfs("db").exists()

    started = time.monotonic()
    dry = host.run("vs-create", "--dry-run", "--name", "web", "--interface", "198.51.100.10")
    elapsed = time.monotonic() - started
    assert (
        f"checked: no answer to ARP for 198.51.100.10 on {UPLINK} within 1 s"
        f" (request from {HOST_LAN_IP})"
    ) in dry.stderr
    assert "checked: 198.51.100.10 is configured on no interface of this host" in dry.stderr
    assert elapsed < 5, f"vs-create --dry-run of a free address took {elapsed:.1f} s"
    assert _tree(host) == before
    host.run("vs-create", "--name", "web", "--interface", "198.51.100.10")
    host.guests.append("web")

    # A guest of this host answers for its own address once it runs (proxy ARP on up0): a
    # second guest at that address is refused by the guest.conf check, with its name.
    host.run("vs-control", "--name", "web", "--start")
    again = host.run("vs-create", "--name", "db", "--interface", "198.51.100.10", check=False)
    assert again.returncode == 4, again.stderr
    assert "198.51.100.10 is already the address of guest web" in again.stderr

    # Without an address of its own in the network on the uplink, the host sends an RFC 5227
    # probe (sender 0.0.0.0), which the peer answers.
    subprocess.run(
        [*netns_prefix(host.netns), "ip", "addr", "del", f"{HOST_LAN_IP}/24", "dev", UPLINK],
        check=True,
    )
    taken = host.run("vs-create", "--name", "db", "--interface", PEERS["admin"], check=False)
    assert taken.returncode == 4 and f"{PEERS['admin']} answers ARP on" in taken.stderr
    free = host.run("vs-create", "--dry-run", "--name", "db", "--interface", "198.51.100.11")
    assert "(RFC 5227 probe from 0.0.0.0)" in free.stderr
    assert not host.rootfs("db").exists() and not (host.guests_dir / "db").exists()


@pytest.mark.e2e
def test_the_probe_is_skipped_with_its_reason(host: Host, tarballs: dict[str, Path]) -> None:
    """NETWORK=none (the test hosts' default), a VLAN uplink not created yet, an address in no
    network: the address is still checked against the host's interfaces."""
    _configure(host, f"DEFAULT_TEMPLATE={tarballs['.tar']}\nDEFAULT_DEVICE=vstnope0\n")
    argv = ["vs-create", "--dry-run", "--name", "db", "--interface", "198.51.100.12"]
    none = host.run(*argv).stderr
    assert "198.51.100.12 not probed on the network: NETWORK=none in vs-tools.conf" in none
    assert "checked: 198.51.100.12 is configured on no interface of this host" in none
    settings = Path(host.env["VS_ETC_DIR"]) / "vs-tools.conf"
    settings.write_text(settings.read_text().replace("NETWORK=none", "NETWORK=routed"))
    vlan = host.run(*argv).stderr
    assert "its uplink vstnope0.1 does not exist yet (created when the first guest of" in vlan
    (Path(host.env["VS_ETC_DIR"]) / "networks.conf").write_text("")
    alone = host.run(*argv).stderr
    assert "it is in no network of networks.conf" in alone
    subprocess.run([*netns_prefix(host.netns), "ip", "link", "set", "lo", "up"], check=True)
    local = host.run("vs-create", "--name", "db", "--interface", "127.0.0.1", check=False)
    assert local.returncode == 4 and "127.0.0.1 is already configured on lo" in local.stderr
