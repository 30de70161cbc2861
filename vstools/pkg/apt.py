"""apt and dpkg (Debian, Ubuntu): argv builders, the parsers of their lists and of the guest's
sources. Pure: vstools.pkg.driver runs what is built here inside the guest.

apt is pointed at the proxy for this run only, by options on its command line
(``-o Acquire::http::Proxy=...``); the guest's own files are never edited. It runs
non-interactively (``DEBIAN_FRONTEND=noninteractive``, a fixed conffile policy) and reports its
progress on stderr (``APT::Status-Fd=2``: ``pmstatus:``/``dlstatus:`` lines)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from vstools.pkg.tools import Action, Conffiles, Invocation, Package, Step

ENV = {
    "DEBIAN_FRONTEND": "noninteractive",
    "APT_LISTCHANGES_FRONTEND": "none",
    "NEEDRESTART_MODE": "a",
}
STATUS_FD = 2
SOURCES_LIST = "/etc/apt/sources.list"
SOURCES_DIR = "/etc/apt/sources.list.d/"


def _common(proxy_url: str | None, conffiles: Conffiles) -> list[str]:
    options = [f"APT::Status-Fd={STATUS_FD}", "Dpkg::Use-Pty=0", "APT::Color=0"]
    if proxy_url is not None:
        # Both schemes through the proxy: http as a forward proxy, https by CONNECT.
        options += [f"Acquire::http::Proxy={proxy_url}", f"Acquire::https::Proxy={proxy_url}"]
    else:
        # Nothing that downloads is run without the proxy, and nothing else may try.
        options += ["Acquire::http::Proxy=DIRECT", "Acquire::https::Proxy=DIRECT"]
    policy = "--force-confold" if conffiles is Conffiles.OLD else "--force-confnew"
    options += ["Dpkg::Options::=--force-confdef", f"Dpkg::Options::={policy}"]
    return [item for option in options for item in ("-o", option)]


class Apt:
    """apt-get, apt-cache and dpkg-query, as the guest has them."""

    name = "apt"

    def invocation(self, step: Step, proxy_url: str | None, conffiles: Conffiles) -> Invocation:
        """The apt-get, apt-cache or dpkg-query command line of ``step``."""
        get = ["apt-get", "-q", *_common(proxy_url, conffiles)]
        argv: list[str]
        match step.action:
            case Action.UPDATE_SOURCES:
                # A mirror that cannot be fetched fails the step (apt's default is a warning
                # and exit 0, which would hide a closed path as success).
                argv = [*get, "-o", "APT::Update::Error-Mode=any", "update"]
            case Action.LIST_UPGRADES:
                argv = [*get, "-s", "upgrade"]  # a simulation lists what would be upgraded
            case Action.UPGRADE_ALL:
                argv = [*get, "-y", "upgrade"]
            case Action.UPGRADE:
                argv = [*get, "-y", "install", "--only-upgrade", "--", *step.args]
            case Action.INSTALL:
                argv = [*get, "-y", "install", "--", *step.args]
            case Action.REMOVE:
                argv = [*get, "-y", "remove", "--", *step.args]
            case Action.SEARCH:
                argv = ["apt-cache", "search", "--", *step.args]
            case Action.SHOW:
                argv = ["apt-cache", "show", "--", *step.args]
            case Action.LIST_INSTALLED:
                argv = ["dpkg-query", "-W", "-f=${db:Status-Abbrev}\t${Package}\t${Version}\n"]
        return Invocation(tuple(argv), dict(ENV))

    def parse_list(self, action: Action, text: str) -> list[Package]:
        """Packages from ``apt-get -s upgrade`` (``Inst`` lines), ``apt-cache search`` or
        ``dpkg-query -W`` output."""
        found = []
        for line in text.splitlines():
            if action is Action.LIST_UPGRADES:
                match = re.match(r"Inst (\S+) (?:\[(\S+)\] )?\((\S+)", line)
                if match:
                    found.append(Package(match[1], match[2] or "", match[3]))
            elif action is Action.SEARCH:
                name, sep, summary = line.partition(" - ")
                if sep:
                    found.append(Package(name.strip(), summary=summary.strip()))
            elif action is Action.LIST_INSTALLED:
                fields = line.split("\t")
                if len(fields) == 3 and fields[0].startswith("ii"):
                    found.append(Package(fields[1], fields[2]))
        return found

    def mirror_files(self) -> Sequence[str]:
        """sources.list and the sources.list.d directory."""
        return (SOURCES_LIST, SOURCES_DIR)

    def parse_mirrors(self, path: str, text: str) -> list[str]:
        """The URIs of one-line ``deb``/``deb-src`` entries (``*.list``) or of deb822 stanzas
        (``*.sources``, ``URIs:`` fields, stanzas with ``Enabled: no`` left out)."""
        if path.endswith(".sources"):
            return _deb822_uris(text)
        if path.startswith(SOURCES_DIR) and not path.endswith(".list"):
            return []  # apt itself ignores other names in sources.list.d
        uris = []
        for raw in text.splitlines():
            line = raw.split("#", 1)[0].strip()
            words = line.split()
            if not words or words[0] not in ("deb", "deb-src"):
                continue
            rest = line[len(words[0]) :].strip()
            if rest.startswith("["):  # options: [arch=amd64 signed-by=...]
                rest = rest.partition("]")[2].strip()
            if rest:
                uris.append(rest.split()[0])
        return uris


def _deb822_uris(text: str) -> list[str]:
    uris: list[str] = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for line in stanza.splitlines():
            if line.startswith("#"):
                continue
            if line[:1] in (" ", "\t") and key:
                fields[key] += " " + line.strip()
                continue
            key, sep, value = line.partition(":")
            if not sep:
                key = ""
                continue
            key = key.strip().lower()
            fields[key] = value.strip()
        if fields.get("enabled", "yes").lower() == "no":
            continue
        uris += fields.get("uris", "").split()
    return uris
