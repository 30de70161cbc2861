"""The per-run package proxy: a tinyproxy (Debian's package) bound to PKG_PROXY_ADDRESS alone,
admitting only the guest's address as client and only its mirrors' names as destinations
(plain HTTP, and CONNECT to the HTTPS ports they use). It resolves those names itself, on the
host, so the guest needs no DNS and CDN address changes do not matter.

It runs as its own uid (PKG_PROXY_UID, which the firewall keeps from the host's own addresses),
never as root, with no log file (errors go to its stderr, which vs-pkg
shows with -v), and dies with the vs-pkg process that started it (PR_SET_PDEATHSIG), so a
``kill -9`` of vs-pkg leaves no proxy behind."""

from __future__ import annotations

import contextlib
import errno
import os
import random
import re
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from vstools.errors import HostError
from vstools.firewall.render import PKG_PROXY_UID
from vstools.host.run import Process, spawn, which
from vstools.pkg.detect import Mirror

PROGRAM = "tinyproxy"
READY_TIMEOUT_S = 10.0


def render_filter(mirrors: Sequence[Mirror]) -> str:
    """tinyproxy's filter file: one anchored extended regular expression a mirror name; with
    ``FilterDefaultDeny`` every other name is refused."""
    names = sorted({m.host for m in mirrors})
    return "".join(f"^{re.escape(name)}$\n" for name in names)


def render_config(
    listen: IPv4Address, port: int, client: IPv4Address, mirrors: Sequence[Mirror], filter_path: str
) -> str:
    """tinyproxy.conf for one run: bound to ``listen``:``port``, ``client`` alone allowed."""
    connect_ports = sorted({m.port for m in mirrors if m.scheme == "https"}) or [0]
    lines = [
        f"Port {port}",
        f"Listen {listen}",
        "Timeout 120",
        "MaxClients 32",
        "LogLevel Error",
        f"Allow {client}",
        f'Filter "{filter_path}"',
        "FilterType ere",
        "FilterURLs No",  # by domain: the Host of a request, the name of a CONNECT
        "FilterCaseSensitive No",
        "FilterDefaultDeny Yes",
        "DisableViaHeader Yes",
        # CONNECT only to the HTTPS ports of the mirrors (0: no CONNECT at all).
        *(f"ConnectPort {p}" for p in connect_ports),
    ]
    return "\n".join(lines) + "\n"


def check_mirror_addresses(
    mirrors: Sequence[Mirror], host_addresses: Sequence[IPv4Address]
) -> list[str]:
    """Why each mirror may not be proxied, if it may not: the proxy connects from the host, so
    a guest naming ``127.0.0.1``, ``localhost`` or a name of its own that resolves to the host
    (or to a link-local, multicast or unspecified address) would reach the host's own services
    through it. Names are resolved now; a name whose DNS changes between this check and the
    download is not caught (DNS rebinding: docs/commands/vs-pkg.md)."""
    refused = []
    for mirror in mirrors:
        try:
            infos = socket.getaddrinfo(mirror.host, mirror.port, socket.AF_INET, socket.SOCK_STREAM)
        except OSError as exc:
            refused.append(f"{mirror.host} does not resolve on the host ({exc})")
            continue
        for info in infos:
            address = IPv4Address(info[4][0])
            if (
                address.is_loopback
                or address.is_link_local
                or address.is_multicast
                or address.is_unspecified
                or address in host_addresses
            ):
                refused.append(f"{mirror.host} resolves to {address}, an address of the host")
                break
    return refused


def free_port(address: IPv4Address, *, below: int = 0) -> int:
    """A TCP port free on ``address`` now: the kernel's pick, or with ``below`` a random one
    from 10000 up to it (for a program that cannot take the kernel's ephemeral ports)."""
    candidates = random.sample(range(10000, below), 200) if below else [0]
    for port in candidates:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((str(address), port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE and below:
                    continue
                raise
            return int(probe.getsockname()[1])
    raise HostError(f"no free TCP port below {below} on {address}")


@dataclass
class Proxy:
    """A running proxy (tinyproxy, or apt-cacher-ng with PKG_CACHE): its process, address and
    port, and what to do once it has stopped (apt-cacher-ng: release the cache's lock)."""

    process: Process
    address: IPv4Address
    port: int
    after_stop: Callable[[], None] | None = None

    @property
    def url(self) -> str:
        """The proxy URL the guest's package manager is given."""
        return f"http://{self.address}:{self.port}/"

    def stop(self) -> None:
        """Stop it by its PID and reap it, then run ``after_stop`` (once)."""
        try:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=5)
                except Exception:
                    self.process.kill()
                    self.process.wait()
        finally:
            after, self.after_stop = self.after_stop, None
            if after is not None:
                after()


def start_proxy(
    workdir: Path, address: IPv4Address, client: IPv4Address, mirrors: Sequence[Mirror]
) -> Proxy:
    """Write the configuration into ``workdir`` and start tinyproxy; returns once it accepts
    connections. HostError when it is not installed or does not come up."""
    program = which(PROGRAM)
    if program is None:
        raise HostError(f"{PROGRAM} is not installed on this host (apt-get install {PROGRAM})")
    workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    port = free_port(address)
    # tinyproxy runs as its own uid and reads its files through descriptors opened here, as
    # /proc/self/fd/N: the run directory stays root's alone.
    filter_fd = _memfd("filter", render_filter(mirrors))
    conf_text = render_config(address, port, client, mirrors, f"/proc/self/fd/{filter_fd}")
    conf_fd = _memfd("conf", conf_text)
    (workdir / "tinyproxy.conf").write_text(conf_text)  # for the administrator to read
    stderr_path = workdir / "tinyproxy.log"
    try:
        with open(stderr_path, "wb") as stderr:
            process = spawn(
                [program, "-d", "-c", f"/proc/self/fd/{conf_fd}"],
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                user=(PKG_PROXY_UID, PKG_PROXY_UID),
                die_with_parent=True,
                stderr=stderr.fileno(),
                pass_fds=(filter_fd, conf_fd),
            )
    finally:
        os.close(filter_fd)
        os.close(conf_fd)
    return ready(Proxy(process, address, port), PROGRAM, stderr_path)


def ready(proxy: Proxy, program: str, stderr_path: Path) -> Proxy:
    """``proxy`` once it accepts connections; stopped, and HostError with what it said on
    ``stderr_path``, when it exits or does not answer within READY_TIMEOUT_S."""
    try:
        _wait_ready(proxy, program, stderr_path)
    except BaseException:
        proxy.stop()
        raise
    return proxy


def _wait_ready(proxy: Proxy, program: str, stderr_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if proxy.process.poll() is not None:
            said = stderr_path.read_text(errors="replace").strip()[-500:]
            raise HostError(f"{program} exited at start ({proxy.process.returncode}): {said}")
        with (
            contextlib.suppress(OSError),
            socket.create_connection((str(proxy.address), proxy.port), timeout=0.5),
        ):
            return
        if time.monotonic() > deadline:
            raise HostError(f"{program} does not accept connections on {proxy.url}")
        time.sleep(0.005)


def _memfd(name: str, text: str) -> int:
    fd = os.memfd_create(f"vs-pkg-{name}", 0)  # no MFD_CLOEXEC: it is passed on
    os.write(fd, text.encode())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def start_time(pid: int) -> int:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), 0 when
    it is gone: with the PID, it names one process for good."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ESRCH):
            return 0
        raise
    return int(stat.rpartition(")")[2].split()[19])


def proxy_alive(pid: int, started: int) -> bool:
    """Whether ``pid`` is still the proxy that started at ``started`` (a leftover to stop): a
    recycled PID belongs to someone else and is left alone."""
    return started != 0 and start_time(pid) == started
