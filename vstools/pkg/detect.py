"""Which package manager a guest has and which mirrors its configuration names, read from its
root filesystem through the rootfs door (vstools.host.rootfs): a guest symlink such as
``etc/apt/sources.list -> /etc/shadow`` resolves inside the guest's root, never the host's."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

from vstools.errors import UsageError
from vstools.host.rootfs import GuestRoot
from vstools.pkg.apk import Apk
from vstools.pkg.apt import Apt
from vstools.pkg.dnf import Dnf
from vstools.pkg.tools import PackageTool

log = logging.getLogger("vstools.pkg")

# The files that mark each package manager, first match wins (a Debian guest with an apk binary
# lying around is still a Debian guest: dpkg's database decides).
MARKERS: tuple[tuple[tuple[str, ...], type[Apt] | type[Dnf] | type[Apk]], ...] = (
    (("/var/lib/dpkg/status", "/usr/bin/apt-get"), Apt),
    (("/var/lib/rpm", "/usr/bin/dnf"), Dnf),
    (("/lib/apk/db/installed", "/sbin/apk"), Apk),
)


def detect_tool(root: GuestRoot, name: str) -> PackageTool:
    """The guest's package manager; UsageError naming what is supported when there is none."""
    for markers, tool in MARKERS:
        if all(root.exists(marker) for marker in markers):
            return tool()
    raise UsageError(
        f"guest {name}: no supported package manager found (apt/dpkg, dnf or apk; looked for"
        " /var/lib/dpkg/status with apt-get, /var/lib/rpm with dnf, /lib/apk/db/installed"
        " with apk)"
    )


@dataclass(frozen=True, slots=True, order=True)
class Mirror:
    """A host the guest's package manager downloads from, and the port it uses."""

    host: str
    port: int
    scheme: str


def mirror_of(url: str) -> Mirror | None:
    """The mirror of an http or https URL; None for anything else (``file:``, ``cdrom:``)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return Mirror(parts.hostname.lower(), port or (443 if parts.scheme == "https" else 80),
                  parts.scheme)  # fmt: skip


def read_mirrors(root: GuestRoot, tool: PackageTool) -> list[Mirror]:
    """Every mirror the guest's configuration names, sorted, without duplicates."""
    found: set[Mirror] = set()
    for entry in tool.mirror_files():
        paths = [entry + item for item in root.listdir(entry)] if entry.endswith("/") else [entry]
        for path in paths:
            try:
                text = root.read_text(path, max_bytes=1 << 20)
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                continue
            except OSError as exc:
                log.warning("%s: not read (%s)", path, exc)
                continue
            for url in tool.parse_mirrors(path, text):
                mirror = mirror_of(url)
                if mirror is None:
                    log.info("%s: %s is not an http(s) mirror, left out", path, url)
                else:
                    found.add(mirror)
    return sorted(found)
