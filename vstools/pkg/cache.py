"""The caching package proxy of ``PKG_CACHE=apt-cacher-ng``: Debian's apt-cacher-ng in place of
tinyproxy for an apt guest, with the same fences, and a package cache that every run shares.

- bound to PKG_PROXY_ADDRESS and the run's port alone (``BindAddress``, ``Port``);
- as PKG_PROXY_UID, never root, so the firewall's output chain keeps it from the host's own
  addresses exactly as it keeps tinyproxy;
- clients: the guest's address alone, by libwrap (``UseWrap: 1``, which asks hosts.allow and
  hosts.deny for the daemon name ``apt-cacher-ng``); the files it reads are the run's, bind
  mounted over /etc/hosts.allow and /etc/hosts.deny in a mount namespace of its own;
- destinations: plain HTTP only to URLs under a ``Remap-`` line of one of the guest's mirrors
  (``ForceManaged: 1`` refuses every other URL with 403; the download goes to the remap's
  backend, the mirror itself), CONNECT only to ``name:port`` of its HTTPS mirrors
  (``PassThroughPattern``, anchored; tunnelled, so not cached), nothing else;
- no log files, no report page, no local admin socket, no hooks (its configuration directory
  is the run's, holding acng.conf alone);
- its cache, ``PKG_CACHE_DIR/apt-cacher-ng`` (the only directory it can write, owned by its
  uid, inside a directory only root may enter), bind mounted at /var/cache/apt-cacher-ng. One
  apt-cacher-ng at a time uses it (a lock held while it runs): two would write the same files.

Each HTTP mirror's remap is named after its name and port, so every guest and every run that
names the same mirror finds the same files."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
from collections.abc import Sequence
from ipaddress import IPv4Address
from pathlib import Path

from vstools.errors import HostError, UsageError
from vstools.firewall.render import PKG_PROXY_UID
from vstools.host.fsutil import locked
from vstools.host.run import spawn, which
from vstools.pkg.detect import Mirror
from vstools.pkg.proxy import Proxy, free_port, ready

PROGRAM = "apt-cacher-ng"
CACHE_SUBDIR = "apt-cacher-ng"
# The fixed paths apt-cacher-ng and libwrap read, each replaced by the run's own file or
# directory in the proxy's mount namespace (so each must exist on the host as a mount point).
CONF_TARGET = "/etc/apt-cacher-ng"
CACHE_TARGET = "/var/cache/apt-cacher-ng"
ALLOW_TARGET = "/etc/hosts.allow"
DENY_TARGET = "/etc/hosts.deny"
# A mirror name as it may appear in apt-cacher-ng's configuration and regular expressions: DNS
# labels only. A guest's sources.list is the guest's to write; a name with ``;``, ``|``, space
# or a regex character would change the configuration it is written into.
HOST_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")


def check_mirror_names(mirrors: Sequence[Mirror]) -> list[str]:
    """Why each mirror cannot be given to apt-cacher-ng, if it cannot (names of DNS labels
    only: the name is written into its configuration and its CONNECT pattern)."""
    return [
        f"{m.host} is not a DNS name apt-cacher-ng can be limited to"
        for m in sorted(set(mirrors))
        if not HOST_NAME.fullmatch(m.host)
    ]


def remap_name(mirror: Mirror) -> str:
    """The stable name of a mirror's ``Remap-`` line, which is also its cache directory."""
    digest = hashlib.sha256(f"{mirror.host}:{mirror.port}".encode()).hexdigest()[:12]
    return f"vst{digest}"


def render_config(listen: IPv4Address, port: int, mirrors: Sequence[Mirror]) -> str:
    """acng.conf for one run: bound to ``listen``:``port``, the mirrors' URLs and CONNECT
    targets only. Every option apt-cacher-ng would otherwise take a default for that opens
    something is set here."""
    http = sorted({m for m in mirrors if m.scheme == "http"})
    https = sorted({f"{m.host}:{m.port}" for m in mirrors if m.scheme == "https"})
    # No HTTPS mirror: a pattern no CONNECT target matches (its default admits two Debian and
    # Ubuntu hosts).
    passthrough = "^(" + "|".join(t.replace(".", r"\.") for t in https) + ")$" if https else "^$"
    lines = [
        f"Port: {port}",
        f"BindAddress: {listen}",
        "ForeGround: 1",
        f"CacheDir: {CACHE_TARGET}",
        "LogDir:",
        "SocketPath:",
        "PidFile:",
        "ReportPage:",
        "ExposeOrigin: 0",
        "UseWrap: 1",
        "ForceManaged: 1",
        *(f"Remap-{remap_name(m)}: {_remap(m)}" for m in http),
        f"PassThroughPattern: {passthrough}",
    ]
    return "\n".join(lines) + "\n"


def _remap(mirror: Mirror) -> str:
    """A remap's URL prefixes (the port spelled or not when it is 80) and its one backend."""
    if mirror.port == 80:
        return f"{mirror.host}/ {mirror.host}:80/ ; http://{mirror.host}/"
    return f"{mirror.host}:{mirror.port}/ ; http://{mirror.host}:{mirror.port}/"


def render_hosts_allow(clients: Sequence[IPv4Address]) -> str:
    """hosts.allow for the proxy's mount namespace: apt-cacher-ng admits ``clients`` only."""
    return f"{PROGRAM}: {' '.join(str(c) for c in sorted(set(clients)))}\n"


HOSTS_DENY = "ALL: ALL\n"
# apt-cacher-ng 3.7 cannot bind a port from 32768 up (Debian 12's: "Error resolving address
# for binding"), which is where the kernel's ephemeral ports start.
PORT_LIMIT = 32768


def prepare_cache_dir(cache_dir: Path) -> Path:
    """``cache_dir`` (root's, 0700) and in it the directory apt-cacher-ng writes (its uid's,
    0700), made if missing; returns the latter. HostError when either is not a directory."""
    cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    _check_dir(cache_dir, 0)
    os.chmod(cache_dir, 0o700)
    data = cache_dir / CACHE_SUBDIR
    with contextlib.suppress(FileExistsError):
        data.mkdir(mode=0o700)
    _check_dir(data, None)
    os.chown(data, PKG_PROXY_UID, PKG_PROXY_UID)
    os.chmod(data, 0o700)
    return data


def _check_dir(path: Path, uid: int | None) -> None:
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or (uid is not None and info.st_uid != uid):
        owner = "" if uid is None else f" owned by uid {uid}"
        raise HostError(f"vs-pkg cache: {path} must be a directory{owner}")


def start_cache_proxy(
    workdir: Path,
    address: IPv4Address,
    client: IPv4Address,
    mirrors: Sequence[Mirror],
    cache_dir: Path,
    *,
    lock_timeout_s: float,
) -> Proxy:
    """Start apt-cacher-ng for ``client`` and its ``mirrors`` on ``address``, the cache in
    ``cache_dir``; returns once it accepts connections, the cache's lock held until it stops.
    UsageError for a mirror name it cannot be limited to; HostError when it is not installed
    or does not come up."""
    refused = check_mirror_names(mirrors)
    if refused:
        raise UsageError("mirrors refused, nothing opened: " + "; ".join(refused))
    program = which(PROGRAM, "/usr/sbin:/usr/bin:/sbin:/bin")
    if program is None:
        raise HostError(f"PKG_CACHE={PROGRAM}: it is not installed (apt-get install {PROGRAM})")
    missing = [t for t in (CONF_TARGET, CACHE_TARGET, ALLOW_TARGET, DENY_TARGET) if not
               os.path.exists(t)]  # fmt: skip
    if missing:
        raise HostError(
            f"PKG_CACHE={PROGRAM}: {', '.join(missing)} missing on the host (the run's own"
            " files are mounted over them for the proxy alone; an empty file will do)"
        )
    data = prepare_cache_dir(cache_dir)
    lock = contextlib.ExitStack()
    lock.enter_context(
        locked(cache_dir / "lock", what="vs-pkg apt-cacher-ng", timeout_s=lock_timeout_s)
    )
    try:
        proxy = _start(program, workdir, address=address, client=client, mirrors=mirrors, data=data)
    except BaseException:
        lock.close()
        raise
    proxy.after_stop = lock.close
    return proxy


def _start(
    program: str,
    workdir: Path,
    *,
    address: IPv4Address,
    client: IPv4Address,
    mirrors: Sequence[Mirror],
    data: Path,
) -> Proxy:
    workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    port = free_port(address, below=PORT_LIMIT)
    # Its own files, world-readable (they hold nothing secret) and root's: it reads them
    # through the bind mounts, whatever the permissions of the run directory.
    conf = workdir / "acng"
    conf.mkdir(mode=0o755, exist_ok=True)
    files = {
        conf / "acng.conf": render_config(address, port, mirrors),
        workdir / "hosts.allow": render_hosts_allow([client]),
        workdir / "hosts.deny": HOSTS_DENY,
    }
    for path, text in files.items():
        path.write_text(text)
        path.chmod(0o644)
    stderr_path = workdir / "apt-cacher-ng.log"
    binds = [
        (str(conf), CONF_TARGET),
        (str(data), CACHE_TARGET),
        (str(workdir / "hosts.allow"), ALLOW_TARGET),
        (str(workdir / "hosts.deny"), DENY_TARGET),
    ]
    with open(stderr_path, "wb") as stderr:
        process = spawn(
            [program, "-c", CONF_TARGET],
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            user=(PKG_PROXY_UID, PKG_PROXY_UID),
            die_with_parent=True,
            stderr=stderr.fileno(),
            binds=binds,
        )
    return ready(Proxy(process, address, port), PROGRAM, stderr_path)
