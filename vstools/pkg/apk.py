"""apk (Alpine): argv builders and parsers. Pure.

apk has no proxy option of its own; it reads ``http_proxy``/``https_proxy`` from its
environment, which vs-pkg sets for this run only."""

from __future__ import annotations

import re
from collections.abc import Sequence

from vstools.pkg.tools import Action, Conffiles, Invocation, Package, Step

REPOSITORIES = "/etc/apk/repositories"


class Apk:
    """apk, as the guest has it."""

    name = "apk"

    def invocation(self, step: Step, proxy_url: str | None, conffiles: Conffiles) -> Invocation:
        """The apk command line of ``step`` (apk keeps changed configuration files as
        ``.apk-new`` by itself: ``conffiles`` does not apply)."""
        env = {"http_proxy": proxy_url, "https_proxy": proxy_url} if proxy_url else {}
        apk = ["apk", "--no-progress"]
        argv: list[str]
        match step.action:
            case Action.UPDATE_SOURCES:
                argv = [*apk, "update"]
            case Action.LIST_UPGRADES:
                argv = [*apk, "--no-network", "version", "-l", "<"]
            case Action.UPGRADE_ALL:
                argv = [*apk, "upgrade"]
            case Action.UPGRADE:
                argv = [*apk, "add", "--upgrade", "--", *step.args]
            case Action.INSTALL:
                argv = [*apk, "add", "--", *step.args]
            case Action.REMOVE:
                argv = [*apk, "del", "--", *step.args]
            case Action.SEARCH:
                argv = [*apk, "--no-network", "search", "-v", "--", *step.args]
            case Action.SHOW:
                argv = [*apk, "--no-network", "info", "-a", "--", *step.args]
            case Action.LIST_INSTALLED:
                argv = [*apk, "--no-network", "info", "-v"]
        return Invocation(tuple(argv), env)

    def parse_list(self, action: Action, text: str) -> list[Package]:
        """Packages from ``apk version -l '<'``, ``apk search -v`` or ``apk info -v``."""
        found = []
        for line in text.splitlines():
            if action is Action.LIST_UPGRADES:
                match = re.match(r"(\S+)-(\d\S*)\s+<\s+(\S+)", line)
                if match:
                    found.append(Package(match[1], match[2], match[3]))
                continue
            name_version, _, summary = line.partition(" - ")
            match = re.fullmatch(r"(\S+)-(\d[^-\s]*-r\d+)", name_version.strip())
            if match and action in (Action.SEARCH, Action.LIST_INSTALLED):
                found.append(Package(match[1], match[2], summary=summary.strip()))
        return found

    def mirror_files(self) -> Sequence[str]:
        """/etc/apk/repositories."""
        return (REPOSITORIES,)

    def parse_mirrors(self, path: str, text: str) -> list[str]:
        """One repository URL a line (``@tag`` prefixes allowed, comments left out)."""
        urls = []
        for raw in text.splitlines():
            line = raw.split("#", 1)[0].strip()
            if line.startswith("@"):
                line = line.partition(" ")[2].strip()
            if line:
                urls.append(line)
        return urls
