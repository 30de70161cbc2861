"""Routed guests and the host-enforced firewall, with real packets (catalogue F3-F17).

Every test runs in namespaces it made: the test host's own network namespace (where vs-control
and vs-net run), a LAN namespace holding the network's gateway and peer hosts, and the guests.
The machine's own namespace is never touched (TESTING.md rule 1)."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.guests import (
    HOST_LAN_IP,
    PEERS,
    Host,
    Lan,
    in_netns,
    listening,
    netns_prefix,
    serve,
)

pytestmark = [pytest.mark.privileged, pytest.mark.e2e]

WEB = "198.51.100.10"
SLIDES_FIREWALL = f"""enable
## Policy is ACCEPT (ESTABLISHED,RELATED is implicit)
allow to {PEERS["dns"]},{PEERS["dns2"]} to udp/53          # DNS
allow to {PEERS["relay"]} to tcp/25                   # mail relay
allow from {PEERS["monitoring"]} to tcp/5666,tcp/4949        # Nagios, Munin
allow from 203.0.113.0/24,{PEERS["admin"]} to tcp/22     # sshd
allow from 0/0 to tcp/80                        # httpd
## DENY is implicit
"""


def start(
    host: Host, name: str, ip: str, firewall: str | None = None, *, userns: bool = False
) -> int:
    directory = host.define(name, ip, userns=userns)
    if firewall is not None:
        (directory / "firewall.conf").write_text(firewall)
    host.run("vs-control", "--name", name, "--start")
    state = host.state(name)
    assert state is not None
    return int(str(state["init_pid"]))


def guest_connect(
    host: Host, name: str, ip: str, port: int, *, proto: str = "tcp", src: str = "-"
) -> str:
    verb = "connect" if proto == "tcp" else "udp"
    return host.exec(name, "vstnet", verb, ip, str(port), src, "1500", check=False).strip()


def nft_listing(host: Host) -> str:
    result = subprocess.run(
        [*netns_prefix(host.netns), "nft", "list", "table", "inet", "vstools"],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout


def host_ns(host: Host, *argv: str, check: bool = True) -> str:
    return subprocess.run(
        [*netns_prefix(host.netns), *argv], capture_output=True, text=True, check=check
    ).stdout


def net_row(host: Host, name: str) -> list[str]:
    return host.run("vs-net", "--name", name).stdout.strip().split(":")


# -- F3/F4/F5: the slides' firewall, allowed flows connect and everything else is refused ------


def test_slides_firewall_with_real_packets(routed: tuple[Host, Lan]) -> None:
    host, lan = routed
    init = start(host, "web", WEB, SLIDES_FIREWALL)
    # The guest sees its own address in its network and the gateway as default route.
    route = Path(f"/proc/{init}/net/route").read_text()
    assert "eth0\t00000000\t016433C6" in route  # default via 198.51.100.1 (little endian)
    assert net_row(host, "web") == ["vsh-test", "web", WEB, "up", "up", "up", "up"]
    for port in (80, 22, 5666, 4949, 443):
        serve(host, "web", "tcp", port)
    serve(host, "web", "udp", 5353)
    inbound = {
        (80, "outsider"): "open",
        (80, "adminnet"): "open",
        (22, "admin"): "open",
        (22, "adminnet"): "open",
        (22, "outsider"): "refused",
        (22, "monitoring"): "refused",
        (5666, "monitoring"): "open",
        (4949, "monitoring"): "open",
        (4949, "outsider"): "refused",
        (443, "admin"): "refused",
    }
    seen = {(port, peer): lan.connect(WEB, port, src=PEERS[peer]) for port, peer in inbound}
    assert seen == inbound
    # Unsolicited UDP to the guest is rejected (F5's other half).
    assert lan.connect(WEB, 5353, proto="udp", src=PEERS["dns"]) == "refused"
    lan.listen("udp", 53, PEERS["dns"])
    lan.listen("tcp", 25)
    lan.listen("tcp", 80)
    outbound = {
        ("udp", "dns", 53): "reply",  # F5: the answer to an allowed query comes back
        ("tcp", "relay", 25): "open",
        ("tcp", "dns", 25): "refused",
        ("tcp", "outsider", 80): "refused",
    }
    seen = {
        (proto, peer, port): guest_connect(host, "web", PEERS[peer], port, proto=proto)
        for proto, peer, port in outbound
    }
    assert seen == outbound


def test_a_guest_in_a_user_namespace_is_routed_behind_its_firewall(
    routed: tuple[Host, Lan],
) -> None:
    """USERNS=yes changes nothing of the network: the veth, routes and firewall are the host's,
    set up before the guest's init joins its user namespace."""
    host, lan = routed
    start(host, "web", WEB, SLIDES_FIREWALL, userns=True)
    assert host.exec("web", "id", "-u").strip() == "0"
    assert net_row(host, "web") == ["vsh-test", "web", WEB, "up", "up", "up", "up"]
    # Its root holds no capability over its network namespace, so ports below 1024 and ICMP
    # echo sockets are open to its own ids, in its namespace only.
    ping_range = host.exec("web", "cat", "/proc/sys/net/ipv4/ping_group_range").split()
    assert ping_range == ["0", "65535"]
    assert host_ns(host, "cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start").strip() != "0"
    for port in (80, 22):
        serve(host, "web", "tcp", port)
    assert lan.connect(WEB, 80, src=PEERS["outsider"]) == "open"
    assert lan.connect(WEB, 22, src=PEERS["outsider"]) == "refused"
    lan.listen("tcp", 25)
    assert guest_connect(host, "web", PEERS["relay"], 25) == "open"
    assert guest_connect(host, "web", PEERS["outsider"], 25) == "refused"


# -- F7, F8: always on, even without 'enable' ---------------------------------------------------


def test_host_isolated_and_spoofing_dropped_without_enable(routed: tuple[Host, Lan]) -> None:
    host, lan = routed
    start(host, "open1", WEB)  # no firewall.conf: no filtering but the always-on part
    start(host, "open2", "198.51.100.11")
    serve(host, "open1", "tcp", 80)
    lan.listen("tcp", 8080)
    # The first packets wait for neighbour resolution on both sides: on a loaded machine
    # that can take longer than the 1.5 s other probes wait for an answer that must come.
    assert lan.connect(WEB, 80, src=PEERS["outsider"], ms=5000) == "open"
    assert guest_connect(host, "open1", PEERS["outsider"], 8080) == "open"
    assert net_row(host, "open1")[-2:] == ["off", "off"]
    # F7: guest -> host (both the uplink address and the veth) and host -> guest are blocked.
    listener = subprocess.Popen(
        [*netns_prefix(host.netns), str(lan.probe), "listen", "tcp", "9090"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert listener.stdout is not None and listener.stdout.readline().strip() == "listening"
        assert guest_connect(host, "open1", HOST_LAN_IP, 9090) in ("timeout", "refused")
        assert guest_connect(host, "open1", "198.51.100.1", 9090) != "open"
        from_host = host_ns(
            host, str(lan.probe), "connect", WEB, "80", "-", "1000", check=False
        ).strip()
        assert from_host != "open"
    finally:
        listener.kill()
        listener.wait()
    # F8: a guest cannot send from an address that is not its own, another guest's included.
    for forged in ("198.51.100.99", "198.51.100.11", PEERS["admin"]):
        assert guest_connect(host, "open1", PEERS["outsider"], 8080, src=forged) == "timeout"
    assert guest_connect(host, "open1", PEERS["outsider"], 8080, src=WEB) == "open"


# -- F11, F17: guest to guest needs a rule; guest names that are nft keywords ------------------


def test_guest_to_guest_needs_a_rule_and_keyword_names(routed: tuple[Host, Lan]) -> None:
    host, _ = routed
    start(host, "fwd", WEB, "enable\nallow from 0/0 to tcp/80\n")
    start(host, "drop", "198.51.100.11", "enable\nallow to 198.51.100.99 to tcp/80\n")
    start(host, "ip", "198.51.100.12", "enable\nallow to 0/0 to tcp/80\nallow from 0/0 to tcp/80\n")
    serve(host, "fwd", "tcp", 80)
    serve(host, "drop", "tcp", 80)
    assert guest_connect(host, "drop", WEB, 80) == "refused"  # drop's OUT has no rule for it
    assert guest_connect(host, "ip", WEB, 80) == "open"  # ip's OUT and fwd's IN both allow
    assert guest_connect(host, "fwd", "198.51.100.11", 80) == "refused"  # fwd's OUT: nothing
    (host.guests_dir / "drop" / "firewall.conf").write_text(f"enable\nallow to {WEB} to tcp/80\n")
    host.run("vs-net", "--name", "drop", "--fw", "up")
    assert guest_connect(host, "drop", WEB, 80) == "open"
    listing = nft_listing(host)
    for chain in ("in_fwd", "out_drop", "in_ip"):
        assert f"chain {chain} {{" in listing
    assert [net_row(host, n)[-2:] for n in ("fwd", "drop", "ip")] == [["up", "up"]] * 3


# -- F13, F16: a failing load leaves the loaded rules as they were ------------------------------


def test_corrupt_firewall_conf_keeps_the_old_rules(routed: tuple[Host, Lan]) -> None:
    host, lan = routed
    start(host, "web", WEB, "enable\nallow from 0/0 to tcp/80\n")
    serve(host, "web", "tcp", 22)
    before = nft_listing(host)
    path = host.guests_dir / "web" / "firewall.conf"
    path.write_text("enable\nallow from 0/0 to tcp/80\nalow from 0/0 to tcp/22\n")
    result = host.run("vs-net", "--name", "web", "--fw", "up", check=False)
    assert result.returncode == 1
    assert f"{path}:3:1: unknown keyword 'alow'" in result.stderr
    assert nft_listing(host) == before
    assert lan.connect(WEB, 22, src=PEERS["admin"]) == "refused"


def test_a_failing_transaction_changes_nothing(
    routed: tuple[Host, Lan], monkeypatch: pytest.MonkeyPatch
) -> None:
    """F13: an update computed from a stale view (it believes a guest "ghost" is dispatched
    when it is not) takes web's chains out, then fails on its last command: the kernel applies
    none of it, and what is loaded stays byte-identical. Both texts an update may load are made
    to fail so: the one read from the loaded state and the one that reads nothing first."""
    import dataclasses
    from ipaddress import IPv4Address

    from vstools.errors import HostError
    from vstools.firewall import backends
    from vstools.firewall.model import GuestFirewall, Ruleset
    from vstools.firewall.render import parse_nft_state

    host, _ = routed
    start(host, "web", WEB, "enable\nallow from 0/0 to tcp/80\n")
    before = nft_listing(host)

    def stale(text: str) -> object:
        state = parse_nft_state(text)
        return dataclasses.replace(state, fw_in={**state.fw_in, "198.51.100.77": "in_ghost"})

    monkeypatch.setattr(backends, "parse_nft_state", stale)
    unread = backends.render_nft_update

    def stale_unread(state: object, put: object, remove: object) -> str:
        text = unread(state, put, remove)  # type: ignore[arg-type]
        ghost_gone = "delete element inet vstools fw_in { 198.51.100.77 }\n"
        return text + ghost_gone if state is None else text

    monkeypatch.setattr(backends, "render_nft_update", stale_unread)
    web = GuestFirewall("web", IPv4Address(WEB), "vs10001")  # not enabled: chains go
    ghost = GuestFirewall("ghost", IPv4Address("198.51.100.77"), "vs9")
    backend = backends.Nftables()
    with in_netns(host.netns), pytest.raises(HostError, match="nft"):
        text = backend.transaction(lambda: Ruleset((web,)), [web, ghost], [])
        assert "delete chain inet vstools in_web" in text
        backend.apply(lambda: Ruleset((web,)), [web, ghost], [])
    assert nft_listing(host) == before


# -- F14, F15: no window, neither across reloads nor at start ----------------------------------


class Prober(threading.Thread):
    """SYNs from the LAN to a denied port, as fast as they go, until stopped."""

    def __init__(self, netns: str, ip: str, port: int) -> None:
        super().__init__(daemon=True)
        self.netns, self.ip, self.port = netns, ip, port
        self.stop = threading.Event()
        self.tries = 0
        self.opened = 0

    def run(self) -> None:
        with in_netns(self.netns):
            while not self.stop.is_set():
                with socket.socket() as sock:
                    sock.settimeout(0.2)
                    sock.bind((PEERS["outsider"], 0))
                    try:
                        sock.connect((self.ip, self.port))
                        self.opened += 1
                    except OSError:
                        pass
                self.tries += 1


def test_no_window_across_1000_reloads(routed: tuple[Host, Lan]) -> None:
    from vstools.firewall.host import Firewall, compile_for
    from vstools.host.hostconfig import HostConfig

    host, lan = routed
    start(host, "web", WEB, "enable\nallow from 0/0 to tcp/80\n")
    serve(host, "web", "tcp", 22)
    hostconf = HostConfig.load(host.env)
    firewall = Firewall(hostconf)
    files = hostconf.guest("web")
    rules = compile_for(files.conf, files.firewall)
    prober = Prober(lan.netns, WEB, 22)
    prober.start()
    try:
        with in_netns(host.netns):
            for round_ in range(1000):
                if round_ % 10 == 0:
                    firewall.load_all()  # the whole table replaced
                else:
                    firewall.put(rules)  # the guest's chains flushed and refilled
    finally:
        prober.stop.set()
        prober.join()
    assert prober.tries > 200, "the prober did not run during the reloads"
    assert prober.opened == 0
    assert lan.connect(WEB, 80, src=PEERS["outsider"]) != "open"  # nothing listens on 80
    serve(host, "web", "tcp", 80)
    assert lan.connect(WEB, 80, src=PEERS["outsider"]) == "open"


def test_no_window_at_start(routed: tuple[Host, Lan]) -> None:
    """The guest's init starts a listener on a denied port as its very first action; a prober
    hammering that port while the guest starts never gets an answer."""
    host, lan = routed
    directory = host.define("web", WEB)
    (directory / "firewall.conf").write_text("enable\nallow from 0/0 to tcp/80\n")
    inittab = host.rootfs("web") / "etc" / "inittab"
    inittab.write_text("::sysinit:/usr/bin/vstnet listen tcp 22\n" + inittab.read_text())
    prober = Prober(lan.netns, WEB, 22)
    prober.start()
    try:
        for _ in range(3):
            host.run("vs-control", "--name", "web", "--start")
            state = host.state("web")
            assert state is not None
            deadline = time.monotonic() + 10
            while not listening(int(str(state["init_pid"])), "tcp", 22):
                assert time.monotonic() < deadline
                time.sleep(0.01)
            time.sleep(0.3)
            host.run("vs-control", "--name", "web", "--stop")
    finally:
        prober.stop.set()
        prober.join()
    assert prober.tries > 20
    assert prober.opened == 0


# -- vs-net layers, stop and teardown -----------------------------------------------------------


def test_vs_net_layers_and_teardown(routed: tuple[Host, Lan]) -> None:
    host, lan = routed
    start(host, "web", WEB, "enable\nallow from 0/0 to tcp/80\n")
    start(host, "db", "198.51.100.11", "enable\n")
    serve(host, "web", "tcp", 22)
    assert lan.connect(WEB, 22, src=PEERS["admin"]) == "refused"
    host.run("vs-net", "--name", "web", "--fw", "down")
    assert net_row(host, "web")[-2:] == ["down", "down"]
    assert lan.connect(WEB, 22, src=PEERS["admin"]) == "open"
    host.run("vs-net", "--name", "web", "--fw", "up")
    assert lan.connect(WEB, 22, src=PEERS["admin"]) == "refused"
    host.run("vs-net", "--name", "web", "--route", "down")
    assert net_row(host, "web")[4] == "down"
    assert lan.connect(WEB, 80, src=PEERS["admin"], ms=500) == "timeout"
    host.run("vs-net", "--name", "web", "--route", "up")
    assert net_row(host, "web")[4] == "up"
    refused = host.run("vs-net", "--name", "web", "--vlan", "down", check=False)
    assert refused.returncode == 4 and "never torn down" in refused.stderr
    # Stopping one guest of the network keeps the network's rule for the other.
    host.run("vs-control", "--name", "web", "--stop")
    rules = host_ns(host, "ip", "rule")
    assert "from 198.51.100.0/24 lookup 1000" in rules
    assert WEB not in host_ns(host, "ip", "route", "show", "table", "all")
    assert WEB not in nft_listing(host)
    assert "vs10001" not in host_ns(host, "ip", "-o", "link")
    host.run("vs-control", "--name", "db", "--stop")
    assert "lookup 1000" not in host_ns(host, "ip", "rule")
    assert "198.51.100" not in host_ns(host, "ip", "route", "show", "table", "1000")
    assert "198.51.100" not in host_ns(host, "ip", "neigh", "show", "proxy")
    assert "198.51.100" not in nft_listing(host)
    assert host.run("vs-net", "--all").stdout.splitlines() == [
        "vsh-test:db:198.51.100.11:up:down:down:down",
        f"vsh-test:web:{WEB}:up:down:down:down",
    ]


def test_start_failure_rolls_the_network_back(routed: tuple[Host, Lan]) -> None:
    host, _ = routed
    (Path(host.env["VS_ETC_DIR"]) / "create.conf").write_text("DEFAULT_DEVICE=nosuch0\n")
    host.define("web", WEB)
    result = host.run("vs-control", "--name", "web", "--start", check=False)
    assert result.returncode == 4  # a StateError in the supervisor keeps its exit code
    assert "no interface nosuch0" in result.stderr
    assert host.state("web") is None
    assert "vs10001" not in host_ns(host, "ip", "-o", "link")
    assert WEB not in nft_listing(host)
    assert not host.cgroup_dir("memory", "web").exists()


def test_plan_shows_the_ruleset_and_its_diff(routed: tuple[Host, Lan]) -> None:
    host, _ = routed
    start(host, "web", WEB, "enable\nallow from 0/0 to tcp/80\n")
    unchanged = host.run("vs-net", "--name", "web", "--plan").stdout
    assert "add rule inet vstools in_web tcp dport 80 return" in unchanged
    assert "(none: what is loaded is what would be loaded)" in unchanged
    before = nft_listing(host)
    (host.guests_dir / "web" / "firewall.conf").write_text(
        "enable\nallow from 0/0 to tcp/80\nallow to localhost to tcp/25\n"
    )
    plan = host.run("vs-net", "--name", "web", "--plan").stdout
    assert "# web: localhost resolves to 127.0.0.1" in plan
    assert "+\t\tip daddr 127.0.0.1 tcp dport 25 return" in plan
    assert nft_listing(host) == before  # a plan changes nothing


@pytest.mark.parametrize("backend", ["iptables-restore", "iptc"])
def test_iptables_backends(routed: tuple[Host, Lan], backend: str) -> None:
    host, lan = routed
    conf = Path(host.env["VS_ETC_DIR"]) / "vs-tools.conf"
    conf.write_text(conf.read_text() + f"FIREWALL_BACKEND={backend}\n")
    start(host, "web", WEB, "enable\nallow from 0/0 to tcp/80\n")
    serve(host, "web", "tcp", 80)
    serve(host, "web", "tcp", 22)
    assert lan.connect(WEB, 80, src=PEERS["outsider"]) == "open"
    assert lan.connect(WEB, 22, src=PEERS["outsider"]) == "refused"
    assert net_row(host, "web")[-2:] == ["up", "up"]
    save = "iptables-save" if backend == "iptables-restore" else "iptables-legacy-save"
    assert "-A vs10001-in" in host_ns(host, save, "-t", "filter")
    host.run("vs-control", "--name", "web", "--stop")
    saved = host_ns(host, save, "-t", "filter")
    assert "vs10001" not in saved and WEB not in saved
