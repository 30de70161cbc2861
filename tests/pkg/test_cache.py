"""vs-pkg with PKG_CACHE=apt-cacher-ng on the real Debian guest: HTTP and HTTPS mirrors work,
a package is downloaded from the mirror once for every run and guest that installs it (the
mirror's own access log), the proxy admits the guest and its mirrors only, and the ruleset is
the same before and after and differs during the run by the one element, a ``kill -9``
included (catalogue H6)."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.guests import netns_prefix
from tests.pkg.conftest import GUEST, MIRROR_IP, MIRROR_NAME, PkgEnv, write_sources
from tests.pkg.test_e2e import _added_lines, _session, _tcp, held_run
from vstools.firewall.render import PKG_PROXY_UID

pytestmark = [pytest.mark.e2e]

DEB = "/pool/vsthello_1.0_all.deb"


def _use_cache(env: PkgEnv) -> Path:
    """PKG_CACHE=apt-cacher-ng in the test host's vs-tools.conf; returns the cache directory."""
    conf = Path(env.host.env["VS_ETC_DIR"]) / "vs-tools.conf"
    conf.write_text(conf.read_text() + "PKG_CACHE=apt-cacher-ng\n")
    return Path(env.host.env["VS_STATE_DIR"]) / "pkg-cache"


def _reset(env: PkgEnv, name: str = GUEST) -> None:
    """Remove the package and empty apt's own cache: the next install downloads again."""
    env.host.exec(name, "sh", "-c", "apt-get -qq -y remove vsthello >/dev/null; apt-get clean")


def test_one_download_serves_every_run_and_guest_http_and_https(pkg_env: PkgEnv) -> None:
    cache = _use_cache(pkg_env)
    before = pkg_env.ruleset()
    result = pkg_env.pkg("--name", GUEST, "--update_sources", "--install", "vsthello")
    assert pkg_env.installed("vsthello") == "1.0", result.stderr
    assert pkg_env.mirror.requests(DEB) == 1
    assert pkg_env.ruleset() == before
    assert not (Path(pkg_env.host.env["VS_RUN_DIR"]) / "pkg" / GUEST).exists()
    # The cache: root's and closed, outside the guest; its data the proxy uid's alone.
    info, data = os.stat(cache), os.stat(cache / "apt-cacher-ng")
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o700)
    assert (data.st_uid, stat.S_IMODE(data.st_mode)) == (PKG_PROXY_UID, 0o700)
    assert list((cache / "apt-cacher-ng").rglob("vsthello_1.0_all.deb"))
    # A second run of the same guest, then another guest: served from the cache.
    _reset(pkg_env)
    pkg_env.pkg("--name", GUEST, "--install", "vsthello")
    assert pkg_env.installed("vsthello") == "1.0"
    pkg_env.add_debian("deb2", "198.51.100.31")
    before = pkg_env.ruleset()  # deb2 has its part now
    pkg_env.pkg("--name", "deb2", "--update_sources", "--install", "vsthello")
    assert pkg_env.mirror.requests(DEB) == 1
    assert pkg_env.ruleset() == before
    # HTTPS mirrors: tunnelled by CONNECT to the mirror's name and port (not cached).
    write_sources(
        pkg_env.rootfs(), f"deb [trusted=yes] https://{MIRROR_NAME}/ vst main", pkg_env.mirror.ca
    )
    result = pkg_env.pkg("--name", GUEST, "--update_sources", "--install", "vstother")
    assert f"https://{MIRROR_NAME}" in result.stdout
    assert pkg_env.installed("vstother") == "2.0"
    assert pkg_env.ruleset() == before
    # A mirror that leads back to the host is refused before anything is opened, as ever.
    write_sources(
        pkg_env.rootfs(), "deb [trusted=yes] http://127.0.0.1/ vst main", pkg_env.mirror.ca
    )
    result = pkg_env.pkg("--name", GUEST, "--update_sources", check=False)
    assert result.returncode == 2, result.stderr
    assert "127.0.0.1 resolves to 127.0.0.1, an address of the host" in result.stderr
    assert pkg_env.ruleset() == before


def _ask(env: PkgEnv, port: int, request: str) -> str:
    """The proxy's status line for ``request`` sent from the guest ("" when it hung up)."""
    script = (
        f"exec 3<>/dev/tcp/169.254.80.1/{port}; printf '{request}\\r\\n\\r\\n' >&3; head -1 <&3"
    )
    return env.host.exec(GUEST, "timeout", "5", "bash", "-c", script, check=False)


def test_during_a_cached_run_the_guest_reaches_its_mirrors_and_nothing_else_until_kill_9(
    pkg_env: PkgEnv,
) -> None:
    _use_cache(pkg_env)
    before = pkg_env.ruleset()
    with held_run(pkg_env) as process:
        session = _session(pkg_env)
        port, pid = int(str(session["port"])), int(str(session["proxy_pid"]))
        added, removed = _added_lines(before, pkg_env.ruleset())
        assert removed == [] and len(added) == 1, added
        assert f"198.51.100.30 . 169.254.80.1 . {port} timeout" in added[0]
        # apt-cacher-ng, as the proxy uid, invisible in the guest.
        assert Path(f"/proc/{pid}/comm").read_text().strip() == "apt-cacher-ng"
        uids = Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[:4]
        assert set(uids) == {str(PKG_PROXY_UID)}
        names = pkg_env.host.exec(GUEST, "sh", "-c", "cat /proc/[0-9]*/comm")
        assert "apt-cacher-ng" not in names
        # The firewall as with tinyproxy: the proxy's port and nothing else.
        assert _tcp(pkg_env, "169.254.80.1", port)
        assert not _tcp(pkg_env, MIRROR_IP, 80)
        assert not _tcp(pkg_env, "198.51.100.1", 80)
        # The proxy: the mirror's URLs and nothing else; no CONNECT at all, even to the mirror's
        # name, since the guest names no HTTPS mirror.
        ok = _ask(pkg_env, port, f"GET http://{MIRROR_NAME}{DEB} HTTP/1.0")
        assert " 200 " in ok, ok
        for request in (
            "GET http://evil.example.org/ HTTP/1.0",
            f"GET http://{MIRROR_IP}{DEB} HTTP/1.0",
            f"GET http://{MIRROR_NAME}.evil.example.org{DEB} HTTP/1.0",
            f"GET http://{MIRROR_NAME}:8080{DEB} HTTP/1.0",
            "CONNECT evil.example.org:443 HTTP/1.0",
            f"CONNECT {MIRROR_NAME}:80 HTTP/1.0",
            f"CONNECT {MIRROR_IP}:443 HTTP/1.0",
            f"CONNECT {MIRROR_NAME}:443 HTTP/1.0",
            "GET /acng-report.html HTTP/1.0",
        ):
            status = _ask(pkg_env, port, request)
            assert " 200 " not in status and status.strip(), (request, status)
        # A client that is not the run's guest (a host process) is hung up on (libwrap).
        other = subprocess.run(
            [*netns_prefix(pkg_env.host.netns), "bash", "-c",
             f"exec 3<>/dev/tcp/169.254.80.1/{port}; printf 'GET http://{MIRROR_NAME}{DEB}"
             " HTTP/1.0\\r\\n\\r\\n' >&3; timeout 5 head -1 <&3"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert other.stdout.strip() == "", other.stdout
        # kill -9 of vs-pkg: apt-cacher-ng dies with it, the cache's lock with both.
        process.kill()
        process.wait()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{pid}").exists()
    # The next run removes the leftover element, takes the cache and works; the ruleset is back.
    result = pkg_env.pkg("--name", GUEST, "--update_sources")
    assert "leftover of an earlier run removed" in result.stderr
    assert pkg_env.ruleset() == before
