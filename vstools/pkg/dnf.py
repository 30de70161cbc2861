"""dnf (Fedora, RHEL and derivatives): argv builders and parsers. Pure.

The proxy is given for this run only with ``--setopt=proxy=...``; the guest's repository files
are read for their mirrors, never edited. ``metalink``/``mirrorlist`` repositories redirect to
mirrors chosen at download time, which the proxy does not know: such a repository needs a
``baseurl`` to be reachable through vs-pkg."""

from __future__ import annotations

import re
from collections.abc import Sequence

from vstools.pkg.tools import Action, Conffiles, Invocation, Package, Step

REPOS_DIR = "/etc/yum.repos.d/"
CHECK_UPDATE_HAS_UPGRADES = 100  # dnf check-update: 100 when upgrades are available


class Dnf:
    """dnf and rpm, as the guest has them."""

    name = "dnf"

    def invocation(self, step: Step, proxy_url: str | None, conffiles: Conffiles) -> Invocation:
        """The dnf or rpm command line of ``step`` (rpm keeps changed configuration files as
        ``.rpmnew`` by itself: ``conffiles`` does not apply)."""
        dnf = ["dnf", "-y", "--noplugins", f"--setopt=proxy={proxy_url or ''}"]
        ok = frozenset({0})
        argv: list[str]
        match step.action:
            case Action.UPDATE_SOURCES:
                argv = [*dnf, "makecache", "--refresh"]
            case Action.LIST_UPGRADES:
                argv = [*dnf, "-q", "-C", "check-update"]
                ok = frozenset({0, CHECK_UPDATE_HAS_UPGRADES})
            case Action.UPGRADE_ALL:
                argv = [*dnf, "upgrade"]
            case Action.UPGRADE:
                argv = [*dnf, "upgrade", "--", *step.args]
            case Action.INSTALL:
                argv = [*dnf, "install", "--", *step.args]
            case Action.REMOVE:
                argv = [*dnf, "remove", "--", *step.args]
            case Action.SEARCH:
                argv = [*dnf, "-q", "-C", "search", "--", *step.args]
            case Action.SHOW:
                argv = [*dnf, "-q", "-C", "info", "--", *step.args]
            case Action.LIST_INSTALLED:
                argv = ["rpm", "-qa", "--qf", "%{NAME}\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\n"]
        return Invocation(tuple(argv), {}, ok)

    def parse_list(self, action: Action, text: str) -> list[Package]:
        """Packages from ``dnf check-update``, ``dnf search`` or ``rpm -qa``."""
        found = []
        for line in text.splitlines():
            if action is Action.LIST_UPGRADES:
                fields = line.split()
                if len(fields) == 3 and "." in fields[0] and not line.startswith(" "):
                    found.append(Package(fields[0].rsplit(".", 1)[0], candidate=fields[1]))
            elif action is Action.SEARCH:
                match = re.match(r"(\S+?)(?:\.\w+)? : (.*)", line)
                if match:
                    found.append(Package(match[1], summary=match[2]))
            elif action is Action.LIST_INSTALLED:
                name, sep, version = line.partition("\t")
                if sep:
                    found.append(Package(name, version.removeprefix("0:")))
        return found

    def mirror_files(self) -> Sequence[str]:
        """The repository directory."""
        return (REPOS_DIR,)

    def parse_mirrors(self, path: str, text: str) -> list[str]:
        """``baseurl``, ``mirrorlist`` and ``metalink`` URLs of the enabled repositories of one
        ``*.repo`` file."""
        if not path.endswith(".repo"):
            return []
        urls: list[str] = []
        for section in re.split(r"^\s*\[[^\]]*\]\s*$", text, flags=re.M)[1:]:
            keys: dict[str, list[str]] = {}
            current = ""
            for line in section.splitlines():
                if not line.strip() or line.lstrip().startswith(("#", ";")):
                    continue
                if line[:1] in (" ", "\t") and current:
                    keys[current] += line.split()
                    continue
                key, sep, value = line.partition("=")
                if sep:
                    current = key.strip().lower()
                    keys[current] = value.replace(",", " ").split()
            if (keys.get("enabled") or ["1"])[0].lower() in ("0", "no", "false"):
                continue
            for key in ("baseurl", "mirrorlist", "metalink"):
                urls += keys.get(key, [])
        return urls
