"""vs-pkg without a guest: the argv builders of apt, dnf and apk, their list parsers, the
guest's mirrors read from fake roots through the rootfs door, detection, the proxy's
configuration, the progress lines, the settings and the command line."""

from __future__ import annotations

import io
import os
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from tests.cli_helpers import invoke
from vstools.config.settings import PkgCache, Settings
from vstools.errors import ConfigError, ExitCode, HostError, UsageError
from vstools.firewall.render import PKG_PROXY_UID
from vstools.host.rootfs import GuestRoot
from vstools.pkg import cache as acng
from vstools.pkg.apk import Apk
from vstools.pkg.apt import Apt
from vstools.pkg.detect import Mirror, detect_tool, mirror_of, read_mirrors
from vstools.pkg.dnf import Dnf
from vstools.pkg.progress import LineSplitter, ProgressBar, parse_status
from vstools.pkg.proxy import check_mirror_addresses, render_config, render_filter
from vstools.pkg.tools import Action, Conffiles, Package, Step, order_steps

PROXY = "http://169.254.80.1:3128/"


def _apt(
    action: Action, *args: str, proxy: str | None = PROXY, conffiles: Conffiles = Conffiles.OLD
) -> tuple[str, ...]:
    return Apt().invocation(Step(action, args), proxy, conffiles).argv


# -- apt -------------------------------------------------------------------------------------


def test_apt_is_pointed_at_the_proxy_on_its_command_line_only() -> None:
    argv = _apt(Action.INSTALL, "nginx", "certbot")
    assert argv[0] == "apt-get"
    assert f"Acquire::http::Proxy={PROXY}" in argv
    assert f"Acquire::https::Proxy={PROXY}" in argv
    assert argv[-4:] == ("install", "--", "nginx", "certbot")
    assert "-y" in argv


def test_apt_without_the_proxy_goes_nowhere() -> None:
    argv = _apt(Action.LIST_UPGRADES, proxy=None)
    assert "Acquire::http::Proxy=DIRECT" in argv and "-s" in argv


def test_apt_conffile_policy_and_status_fd() -> None:
    old = _apt(Action.UPGRADE_ALL)
    new = _apt(Action.UPGRADE_ALL, conffiles=Conffiles.NEW)
    assert "Dpkg::Options::=--force-confold" in old and "--force-confnew" not in " ".join(old)
    assert "Dpkg::Options::=--force-confnew" in new
    assert "APT::Status-Fd=2" in old
    env = Apt().invocation(Step(Action.INSTALL, ("x",)), PROXY, Conffiles.OLD).env
    assert env["DEBIAN_FRONTEND"] == "noninteractive"


@pytest.mark.parametrize(
    ("action", "args", "tail"),
    [
        (Action.UPDATE_SOURCES, (), ("update",)),
        (Action.UPGRADE, ("libc6",), ("install", "--only-upgrade", "--", "libc6")),
        (Action.REMOVE, ("nginx",), ("remove", "--", "nginx")),
        (Action.SEARCH, ("php",), ("apt-cache", "search", "--", "php")),
        (Action.SHOW, ("php",), ("apt-cache", "show", "--", "php")),
    ],
)
def test_apt_actions(action: Action, args: tuple[str, ...], tail: tuple[str, ...]) -> None:
    assert _apt(action, *args)[-len(tail) :] == tail


def test_apt_update_fails_on_a_mirror_it_cannot_fetch() -> None:
    assert "APT::Update::Error-Mode=any" in _apt(Action.UPDATE_SOURCES)


def test_apt_lists() -> None:
    apt = Apt()
    sim = "Inst vsthello [1.0] (1.1 vst:vst [all])\nConf vsthello (1.1 vst:vst [all])\n"
    assert apt.parse_list(Action.LIST_UPGRADES, sim) == [Package("vsthello", "1.0", "1.1")]
    assert apt.parse_list(Action.SEARCH, "nginx - small, powerful\n") == [
        Package("nginx", summary="small, powerful")
    ]
    query = "ii \tbash\t5.2-1\nrc \told\t1\n"
    assert apt.parse_list(Action.LIST_INSTALLED, query) == [Package("bash", "5.2-1")]


def test_apt_sources_one_line_and_deb822() -> None:
    apt = Apt()
    one_line = (
        "# comment\n"
        "deb http://deb.debian.org/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/x.gpg] https://security.debian.org/ bookworm-security main\n"
        "deb-src http://src.example.org/debian bookworm main # trailing\n"
        "deb cdrom:[Debian]/ bookworm main\n"
    )
    assert apt.parse_mirrors("/etc/apt/sources.list", one_line) == [
        "http://deb.debian.org/debian",
        "https://security.debian.org/",
        "http://src.example.org/debian",
        "cdrom:[Debian]/",
    ]
    deb822 = (
        "Types: deb\nURIs: http://a.example.org/debian\n  http://b.example.org/debian\n"
        "Suites: bookworm\n\nTypes: deb\nURIs: http://off.example.org/\nEnabled: no\n"
    )
    assert apt.parse_mirrors("/etc/apt/sources.list.d/x.sources", deb822) == [
        "http://a.example.org/debian",
        "http://b.example.org/debian",
    ]
    # apt ignores other names in sources.list.d, and so do we.
    assert apt.parse_mirrors("/etc/apt/sources.list.d/x.list.save", one_line) == []


# -- dnf and apk -------------------------------------------------------------------------------


def test_dnf_builders() -> None:
    dnf = Dnf()
    install = dnf.invocation(Step(Action.INSTALL, ("httpd",)), PROXY, Conffiles.OLD)
    assert install.argv[:2] == ("dnf", "-y") and f"--setopt=proxy={PROXY}" in install.argv
    assert install.argv[-2:] == ("--", "httpd")
    check = dnf.invocation(Step(Action.LIST_UPGRADES), None, Conffiles.OLD)
    assert "check-update" in check.argv and check.ok_codes == {0, 100}
    assert dnf.invocation(Step(Action.LIST_INSTALLED), None, Conffiles.OLD).argv[0] == "rpm"
    upgrades = "\nbash.x86_64   5.2.26-1.fc40   updates\n"
    assert dnf.parse_list(Action.LIST_UPGRADES, upgrades) == [
        Package("bash", candidate="5.2.26-1.fc40")
    ]
    repo = (
        "[fedora]\nbaseurl=http://dl.example.org/fedora/$releasever/\nenabled=1\n"
        "[off]\nbaseurl=http://off.example.org/\nenabled=0\n"
        "[meta]\nmetalink=https://mirrors.example.org/metalink?repo=x\n"
    )
    assert dnf.parse_mirrors("/etc/yum.repos.d/f.repo", repo) == [
        "http://dl.example.org/fedora/$releasever/",
        "https://mirrors.example.org/metalink?repo=x",
    ]


def test_apk_builders() -> None:
    apk = Apk()
    add = apk.invocation(Step(Action.INSTALL, ("nginx",)), PROXY, Conffiles.OLD)
    assert add.argv[-3:] == ("add", "--", "nginx")
    assert add.env == {"http_proxy": PROXY, "https_proxy": PROXY}
    assert apk.invocation(Step(Action.SEARCH, ("x",)), None, Conffiles.OLD).env == {}
    assert apk.parse_list(Action.LIST_UPGRADES, "musl-1.2.4-r1 < 1.2.4-r2\n") == [
        Package("musl", "1.2.4-r1", "1.2.4-r2")
    ]
    assert apk.parse_list(Action.LIST_INSTALLED, "busybox-1.36.1-r15 - Size optimized\n") == [
        Package("busybox", "1.36.1-r15", summary="Size optimized")
    ]
    repos = "# c\nhttps://dl-cdn.alpinelinux.org/alpine/v3.19/main\n@edge http://e.example.org/x\n"
    assert apk.parse_mirrors("/etc/apk/repositories", repos) == [
        "https://dl-cdn.alpinelinux.org/alpine/v3.19/main",
        "http://e.example.org/x",
    ]


# -- detection and mirrors on fake roots (through the rootfs door) ----------------------------


def _root(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "root"
    for path, text in files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.endswith("/"):
            target.mkdir(exist_ok=True)
        else:
            target.write_text(text)
    root.mkdir(exist_ok=True)
    return root


@pytest.mark.parametrize(
    ("files", "tool"),
    [
        ({"/var/lib/dpkg/status": "", "/usr/bin/apt-get": ""}, "apt"),
        ({"/var/lib/rpm/": "", "/usr/bin/dnf": ""}, "dnf"),
        ({"/lib/apk/db/installed": "", "/sbin/apk": ""}, "apk"),
    ],
)
def test_detection(tmp_path: Path, files: dict[str, str], tool: str) -> None:
    with GuestRoot(_root(tmp_path, files)) as root:
        assert detect_tool(root, "g").name == tool


def test_no_package_manager_is_a_clear_error(tmp_path: Path) -> None:
    with GuestRoot(_root(tmp_path, {"/bin/sh": ""})) as root, pytest.raises(UsageError) as err:
        detect_tool(root, "g")
    assert "no supported package manager" in str(err.value)
    assert err.value.exit_code == ExitCode.USAGE


def test_mirrors_of_a_debian_root(tmp_path: Path) -> None:
    root = _root(
        tmp_path,
        {
            "/etc/apt/sources.list": "deb http://deb.debian.org/debian bookworm main\n",
            "/etc/apt/sources.list.d/sec.sources": "Types: deb\nURIs: https://Sec.Example.org:8443/\n",
            "/etc/apt/sources.list.d/local.list": "deb file:/srv/repo ./\n",
        },
    )
    with GuestRoot(root) as guest:
        assert read_mirrors(guest, Apt()) == [
            Mirror("deb.debian.org", 80, "http"),
            Mirror("sec.example.org", 8443, "https"),
        ]


def test_a_guest_symlink_never_reads_a_host_file(tmp_path: Path) -> None:
    """A7/H2: sources.list -> /etc/secret resolves inside the guest's root, not the host's."""
    secret = tmp_path / "secret"
    secret.write_text("deb http://host-secret.example.org/ x main\n")
    root = _root(tmp_path, {"/etc/apt/": ""})
    (root / "etc" / "apt" / "sources.list").symlink_to(str(secret))
    (root / "etc" / "apt" / "sources.list.d").symlink_to("../../../../../../" + str(tmp_path))
    with GuestRoot(root) as guest:
        assert read_mirrors(guest, Apt()) == []


def test_mirror_of() -> None:
    assert mirror_of("http://deb.debian.org/debian") == Mirror("deb.debian.org", 80, "http")
    assert mirror_of("https://x.example.org/") == Mirror("x.example.org", 443, "https")
    assert mirror_of("ftp://x.example.org/") is None
    assert mirror_of("http://x.example.org:notaport/") is None


# -- the proxy -----------------------------------------------------------------------------


def test_proxy_configuration_admits_the_guest_and_its_mirrors_only() -> None:
    mirrors = [Mirror("deb.debian.org", 80, "http"), Mirror("sec.example.org", 443, "https")]
    conf = render_config(
        IPv4Address("169.254.80.1"), 40000, IPv4Address("198.51.100.30"), mirrors, "/proc/self/fd/3"
    )
    lines = conf.splitlines()
    for line in (
        "Port 40000",
        "Listen 169.254.80.1",
        "Allow 198.51.100.30",
        "FilterDefaultDeny Yes",
        "FilterURLs No",
        "FilterType ere",
        "ConnectPort 443",
    ):
        assert line in lines
    assert render_filter(mirrors) == "^deb\\.debian\\.org$\n^sec\\.example\\.org$\n"


def test_no_https_mirror_no_connect_at_all() -> None:
    conf = render_config(
        IPv4Address("169.254.80.1"),
        1,
        IPv4Address("198.51.100.30"),
        [Mirror("a.example.org", 80, "http")],
        "/f",
    )
    assert "ConnectPort 0" in conf.splitlines()


# -- progress, order, settings, command line ---------------------------------------------------


def test_status_lines_and_progress_bar() -> None:
    assert parse_status("pmstatus:vsthello:42.5:Unpacking vsthello") is not None
    assert parse_status("Setting up vsthello (1.0) ...") is None
    lines: list[str] = []
    splitter = LineSplitter(lines.append)
    splitter.feed(b"dlstatus:x:10:Ret")
    splitter.feed(b"rieving\nnext")
    splitter.close()
    assert lines == ["dlstatus:x:10:Retrieving", "next"]
    stream = io.StringIO()
    bar = ProgressBar(stream, "deb install", width=10)
    status = parse_status(lines[0])
    assert status is not None
    bar.show(status)
    assert "[#         ]  10%" in stream.getvalue()


def test_steps_run_in_the_slides_order() -> None:
    given = [
        Step(Action.INSTALL, ("p",)),
        Step(Action.UPGRADE_ALL),
        Step(Action.LIST_UPGRADES),
        Step(Action.UPDATE_SOURCES),
    ]
    assert [s.action for s in order_steps(given)] == [
        Action.UPDATE_SOURCES,
        Action.LIST_UPGRADES,
        Action.UPGRADE_ALL,
        Action.INSTALL,
    ]


def test_settings_proxy_address_must_be_link_local() -> None:
    assert Settings.parse("vs-tools.conf", "PKG_TIMEOUT=60\n").pkg_timeout_s == 60
    default = Settings.parse("vs-tools.conf", "")
    assert default.pkg_proxy_address == IPv4Address("169.254.80.1")
    with pytest.raises(ConfigError) as err:
        Settings.parse("vs-tools.conf", "PKG_PROXY_ADDRESS=198.51.100.1\n")
    assert "vs-tools.conf:1:" in str(err.value.lines()) and "link-local" in str(err.value.lines())


@pytest.mark.parametrize(
    "argv",
    [
        ["--name", "web", "--install", "-oAPT::x=y"],
        ["--name", "web", "--install", "a b"],
        ["--name", "web", "--search", "--x"],
        ["--name", "web", "--remove", "$(id)"],
        ["--name", "../web", "--install", "x"],
    ],
)
def test_bad_input_is_refused_before_anything(argv: list[str], etc_tree: dict[str, str]) -> None:
    outcome = invoke("vs-pkg", argv, etc_tree)
    assert outcome.code == ExitCode.USAGE, outcome.err


def test_unknown_guest(etc_tree: dict[str, str]) -> None:
    outcome = invoke("vs-pkg", ["--name", "nosuch", "--install", "x"], etc_tree)
    assert outcome.code == ExitCode.NOT_FOUND, outcome.err


def test_iptables_backends_are_refused_with_the_firewall_untouched(
    etc_tree: dict[str, str], tmp_path: Path
) -> None:
    from vstools.host.hostconfig import HostConfig
    from vstools.pkg.session import _nftables

    conf = Path(etc_tree["VS_ETC_DIR"]) / "vs-tools.conf"
    conf.write_text("FIREWALL_BACKEND=iptc\n")
    with pytest.raises(UsageError) as err:
        _nftables(HostConfig.load({**os.environ, **etc_tree}))
    assert "FIREWALL_BACKEND=nftables" in str(err.value)


def test_mirrors_that_lead_back_to_the_host_are_refused() -> None:
    """A guest naming 127.0.0.1, localhost or an address of the host would reach the host's own
    services through a proxy that connects from the host."""
    host = [IPv4Address("198.51.100.2")]
    refused = check_mirror_addresses(
        [
            Mirror("127.0.0.1", 8080, "http"),
            Mirror("localhost", 80, "http"),
            Mirror("198.51.100.2", 80, "http"),
            Mirror("169.254.169.254", 80, "http"),
            Mirror("198.51.100.80", 80, "http"),
        ],
        host,
    )
    assert [r.split()[0] for r in refused] == [
        "127.0.0.1", "localhost", "198.51.100.2", "169.254.169.254"
    ]  # fmt: skip


def test_settings_pkg_cache() -> None:
    assert Settings.parse("vs-tools.conf", "").pkg_cache is PkgCache.NONE
    cached = Settings.parse("vs-tools.conf", "PKG_CACHE=apt-cacher-ng\n")
    assert cached.pkg_cache is PkgCache.APT_CACHER_NG
    with pytest.raises(ConfigError) as err:
        Settings.parse("vs-tools.conf", "# cache\nPKG_CACHE=squid\n")
    lines = str(err.value.lines())
    assert "vs-tools.conf:2:11:" in lines and "apt-cacher-ng" in lines, lines


def test_apt_cacher_ng_configuration_admits_the_mirrors_only() -> None:
    mirrors = [
        Mirror("deb.example.org", 80, "http"),
        Mirror("deb.example.org", 80, "http"),
        Mirror("security.example.org", 8080, "http"),
        Mirror("secure.example.org", 443, "https"),
        Mirror("other.example.org", 8443, "https"),
    ]
    text = acng.render_config(IPv4Address("169.254.80.1"), 3142, mirrors)
    lines = text.splitlines()
    assert "BindAddress: 169.254.80.1" in lines and "Port: 3142" in lines
    # Everything that would open something more is set: URLs of the remaps only, libwrap, no
    # report page, logs, socket.
    for line in ("ForceManaged: 1", "UseWrap: 1", "ReportPage:", "LogDir:", "SocketPath:"):
        assert line in lines
    remaps = [line for line in lines if line.startswith("Remap-")]
    assert sorted(remaps) == sorted(
        [
            f"Remap-{acng.remap_name(mirrors[0])}: deb.example.org/ deb.example.org:80/ ;"
            " http://deb.example.org/",
            f"Remap-{acng.remap_name(mirrors[2])}: security.example.org:8080/ ;"
            " http://security.example.org:8080/",
        ]
    )
    pattern = r"^(other\.example\.org:8443|secure\.example\.org:443)$"
    assert f"PassThroughPattern: {pattern}" in lines
    # The remap name is a function of the mirror alone: every guest and run shares its files.
    assert acng.remap_name(Mirror("deb.example.org", 80, "http")) == acng.remap_name(mirrors[0])
    assert acng.remap_name(mirrors[0]) != acng.remap_name(mirrors[2])
    assert (
        acng.render_hosts_allow([IPv4Address("198.51.100.30")]) == "apt-cacher-ng: 198.51.100.30\n"
    )


def test_apt_cacher_ng_without_https_mirror_tunnels_nothing() -> None:
    text = acng.render_config(IPv4Address("169.254.80.1"), 3142, [Mirror("a.example", 80, "http")])
    assert "PassThroughPattern: ^$" in text.splitlines()  # its default admits two hosts


@pytest.mark.parametrize(
    "host", ["evil|.*", "a;b", "a b", "a.example.org\nUseWrap: 0", "x*", "a..b", "-a.example"]
)
def test_apt_cacher_ng_refuses_names_that_would_change_its_configuration(host: str) -> None:
    refused = acng.check_mirror_names([Mirror(host, 80, "http")])
    assert len(refused) == 1 and "not a DNS name" in refused[0]
    with pytest.raises(UsageError, match="nothing opened"):
        acng.start_cache_proxy(
            Path("/nonexistent"),
            IPv4Address("169.254.80.1"),
            IPv4Address("198.51.100.30"),
            [Mirror(host, 80, "http")],
            Path("/nonexistent"),
            lock_timeout_s=0,
        )
    assert acng.check_mirror_names([Mirror("deb.debian.org", 80, "http")]) == []


def test_the_cache_directory_is_roots_and_its_data_the_proxy_uids(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown to the proxy uid needs root")
    data = acng.prepare_cache_dir(tmp_path / "pkg-cache")
    assert data == tmp_path / "pkg-cache" / "apt-cacher-ng"
    assert (os.stat(data.parent).st_uid, os.stat(data.parent).st_mode & 0o777) == (0, 0o700)
    assert (os.stat(data).st_uid, os.stat(data).st_mode & 0o777) == (PKG_PROXY_UID, 0o700)
    (tmp_path / "elsewhere").mkdir()
    data.rmdir()
    data.symlink_to(tmp_path / "elsewhere")  # never followed
    with pytest.raises(HostError, match="must be a directory"):
        acng.prepare_cache_dir(tmp_path / "pkg-cache")
